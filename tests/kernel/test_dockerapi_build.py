"""POST /build's legacy-builder options through docker-py, each checked in what the build made:
ONBUILD (stored, then triggered by a build FROM the image), shmsize, extrahosts, cachefrom, the
daemon's own .dockerignore, a failed RUN's exit code in errorDetail; and POST /commit's record of
the container an image was made from."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import Any

import docker as dockerpy
import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def api(clean_agent: AgentProcess) -> Iterator[dockerpy.APIClient]:
    c = dockerpy.APIClient(base_url=f"unix://{clean_agent.docker_socket}", version="1.45", timeout=120)
    made: list[str] = []
    c.made = made  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        for tag in made:
            try:
                c.remove_image(tag, force=True)
            except dockerpy.errors.NotFound:
                pass
        c.close()


def build(c: dockerpy.APIClient, dockerfile: str, tag: str, **kw: Any) -> list[dict[str, Any]]:
    c.made.append(tag)  # type: ignore[attr-defined]
    return list(c.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, decode=True, rm=True, **kw))


def ok(out: list[dict[str, Any]]) -> str:
    errors = [o for o in out if "error" in o]
    assert not errors, errors
    return "".join(o.get("stream", "") for o in out)


def output(c: dockerpy.APIClient, image: str, *cmd: str) -> str:
    ctr = c.create_container(image, list(cmd))
    try:
        c.start(ctr)
        assert c.wait(ctr, timeout=60)["StatusCode"] == 0
        return bytes(c.logs(ctr)).decode()
    finally:
        c.remove_container(ctr, force=True)


def test_onbuild_is_stored_and_triggered(api: dockerpy.APIClient) -> None:
    ok(build(api, "FROM busybox\nONBUILD RUN echo triggered > /t\nONBUILD ENV FROMBASE=1\n", "dy-onbuild-base"))
    assert api.inspect_image("dy-onbuild-base")["Config"]["OnBuild"] == ["RUN echo triggered > /t",
                                                                         "ENV FROMBASE=1"]
    # the base itself did not run them
    assert output(api, "dy-onbuild-base", "sh", "-c", "cat /t 2>/dev/null || echo none") == "none\n"
    text = ok(build(api, "FROM dy-onbuild-base\nRUN echo child\n", "dy-onbuild-child"))
    assert "# Executing 2 build triggers" in text
    assert output(api, "dy-onbuild-child", "sh", "-c", "cat /t; echo $FROMBASE") == "triggered\n1\n"
    assert not api.inspect_image("dy-onbuild-child")["Config"]["OnBuild"]   # not inherited further
    # a target stage before the ONBUILD stage never has it
    ok(build(api, "FROM busybox AS first\nRUN true\nFROM busybox\nONBUILD RUN false\n", "dy-onbuild-t",
             target="first"))
    assert not api.inspect_image("dy-onbuild-t")["Config"]["OnBuild"]
    out = build(api, "FROM busybox\nONBUILD FROM alpine\n", "dy-onbuild-bad")
    assert "FROM isn't allowed as an ONBUILD trigger" in out[-1]["error"]


def test_shmsize_extrahosts_and_a_failed_runs_code(api: dockerpy.APIClient) -> None:
    text = ok(build(api, "FROM busybox\nRUN df -k /dev/shm | tail -1; grep dy-extra /etc/hosts\n", "dy-bopts",
                    shmsize=2 * 1024 * 1024, extra_hosts={"dy-extra.test": "127.0.0.2"}, nocache=True))
    assert " 2048 " in text and "127.0.0.2\tdy-extra.test" in text, text
    # a RUN's stderr comes marked red, as the classic builder sends it (stdout plain)
    streams = [o.get("stream") for o in build(api, "FROM busybox\nRUN echo out; echo err >&2\n", "dy-bstderr",
                                              nocache=True)]
    assert "\x1b[91merr\n\x1b[0m" in streams and "out\n" in streams, streams
    out = build(api, "FROM busybox\nRUN exit 3\n", "dy-bfail")
    assert out[-1]["errorDetail"]["code"] == 3 and "returned a non-zero code: 3" in out[-1]["error"]
    with pytest.raises(dockerpy.errors.APIError, match="shmsize"):
        list(api.build(fileobj=io.BytesIO(b"FROM busybox\n"), shmsize=-1))
    with pytest.raises(dockerpy.errors.APIError, match="expected NAME:IP"):
        list(api.build(fileobj=io.BytesIO(b"FROM busybox\n"), extra_hosts=["nocolon"]))


def test_cache_from_limits_the_cache_to_those_images(api: dockerpy.APIClient) -> None:
    df = "FROM busybox\nENV DYCACHE=1\nRUN touch /baz\nRUN touch /bax\n"
    ok(build(api, df, "dy-cache1"))
    assert ok(build(api, df, "dy-cache2", cache_from=["dy-cache1"])).count("Using cache") == 3
    api.remove_image("dy-cache2")
    # an image that is not there is no cache source, and then nothing else is either
    assert ok(build(api, df, "dy-cache2", cache_from=["dy-nosuchtag"])).count("Using cache") == 0
    assert ok(build(api, df, "dy-cache3")).count("Using cache") == 3   # without it: the local cache


def test_the_daemon_applies_dockerignore(api: dockerpy.APIClient) -> None:
    # a raw tar, as a client that did not apply .dockerignore itself sends it
    files = {"Dockerfile": "FROM busybox\nADD . /test\n",
             ".dockerignore": "ignored\nDockerfile\n.dockerignore\n!ignored/keep\n*.log\n",
             "kept": "k", "ignored/file": "x", "ignored/keep": "y", "a.log": "z", "sub/b.log": "still here"}
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as t:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    ctx.seek(0)
    api.made.append("dy-ignore")  # type: ignore[attr-defined]
    ok(list(api.build(fileobj=ctx, custom_context=True, tag="dy-ignore", decode=True)))
    found = sorted(output(api, "dy-ignore", "find", "/test", "-type", "f").split())
    assert found == ["/test/ignored/keep", "/test/kept", "/test/sub/b.log"]


def test_commit_records_its_container(api: dockerpy.APIClient) -> None:
    ctr = api.create_container("busybox", ["touch", "/committed"], environment={"K": "v"})
    try:
        api.start(ctr)
        api.wait(ctr, timeout=60)
        api.made.append("dy-committed")  # type: ignore[attr-defined]
        img = api.inspect_image(api.commit(ctr, repository="dy-committed", changes=["EXPOSE 8000"])["Id"])
        assert img["Container"] == ctr["Id"]
        cc = img["ContainerConfig"]
        assert (cc["Image"], cc["Cmd"], cc["Env"]) == ("busybox", ["touch", "/committed"], ["K=v"])
        assert "8000/tcp" in img["Config"]["ExposedPorts"]
        assert img["Parent"] == api.inspect_image("busybox")["Id"]
        assert "Container" not in api.inspect_image("busybox")   # only a commit has an origin
    finally:
        api.remove_container(ctr, force=True)
