"""`dockyard run`'s own errors: a clear message, docker's exit status, no traceback, nothing left half-made.

As docker: 125 when dockyard itself refuses or fails (a bad flag, the daemon's error), 126 when the
command cannot be invoked, 127 when it is not found. Through the CLI and a real agent, as root.
"""

from __future__ import annotations

import socket
import tarfile
from pathlib import Path

import pytest

from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess, free_port

pytestmark = pytest.mark.root


def _refused(a: AgentProcess, *args: str, code: int = 125) -> str:
    r = a.cli("run", "--rm", *args)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert a.cli("ps", "-a", "-q").stdout == ""  # nothing made, or nothing left
    return r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["-e", "=x"], "invalid environment variable: =x"),
    (["-w", "relative"], "the working directory 'relative' is invalid, it needs to be an absolute path"),
    (["--name", "n" * 300], "it is 300 characters long, the most is 128"),
    (["--name", "bad name"], "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"),
    (["--no-such-flag"], "No such option '--no-such-flag'"),
    (["--cpus", "many"], 'invalid argument "many" for "--cpus" flag'),
])
def test_bad_flags_exit_125_with_the_reason(clean_agent: AgentProcess, args: list[str], message: str) -> None:
    assert message in _refused(clean_agent, *args, "busybox", "true")


def test_the_api_refuses_what_the_cli_would(clean_agent: AgentProcess) -> None:
    """The checks hold for API clients too (the agent's, not only the CLI's)."""
    import grpc

    for cfg, message in [
        (pb.ContainerConfig(image="busybox", cmd=["true"], env=["=x"]), "invalid environment variable: =x"),
        (pb.ContainerConfig(image="busybox", cmd=["true"], workdir="rel"), "the working directory 'rel' is invalid"),
        (pb.ContainerConfig(image="busybox", cmd=["true"], name="n" * 300), "it is 300 characters long"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            clean_agent.stub.CreateContainer(pb.CreateContainerRequest(config=cfg))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in e.value.details()
    assert clean_agent.cli("ps", "-a", "-q").stdout == ""


def test_daemon_errors_exit_125(clean_agent: AgentProcess) -> None:
    assert "Error response from daemon: " in _refused(clean_agent, "no-such-image:latest", "true")


@pytest.mark.slow
def test_command_not_found_127_not_invocable_126(clean_agent: AgentProcess) -> None:
    assert "executable file not found" in _refused(clean_agent, "busybox", "no-such-command", code=127)
    assert "no such file or directory" in _refused(clean_agent, "busybox", "/no/such/file", code=127)
    assert "permission denied" in _refused(clean_agent, "busybox", "/etc/passwd", code=126)
    # and the command's own status passes through untouched
    r = clean_agent.cli("run", "--rm", "busybox", "sh", "-c", "exit 127")
    assert (r.returncode, r.stderr) == (127, "")


@pytest.mark.slow
def test_rm_that_fails_on_a_taken_port_leaves_nothing(clean_agent: AgentProcess) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", port))
        taken.listen(1)
        err = _refused(clean_agent, "-p", f"{port}:80", "busybox", "true")
        assert str(port) in err
        # -d takes the other path (create, then start): the same
        r = clean_agent.cli("run", "-d", "--rm", "-p", f"{port}:80", "busybox", "true")
        assert r.returncode == 125, r.stderr
        assert clean_agent.cli("ps", "-a", "-q").stdout == ""


@pytest.mark.slow
def test_image_with_a_dangling_dev_link_runs(clean_agent: AgentProcess, busybox_tar_path: Path,
                                            tmp_path: Path) -> None:
    """/dev is a link to a path that does not exist in the image: the container's /dev is mounted
    where it points, inside the rootfs (as runc does), not refused with a raw FileExistsError."""
    tar = tmp_path / "devlink.tar"
    with tarfile.open(busybox_tar_path) as src, tarfile.open(tar, "w") as dst:
        for m in src.getmembers():
            name = m.name.lstrip("./")
            if name == "dev" or name.startswith("dev/"):
                continue
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        link = tarfile.TarInfo("dev")
        link.type = tarfile.SYMTYPE
        link.linkname = "/run/missing/dev"
        dst.addfile(link)
    r = clean_agent.cli("import", "--change", 'CMD ["sh"]', str(tar), "devlink:latest")
    assert r.returncode == 0, r.stderr
    try:
        r = clean_agent.cli("run", "--rm", "--network", "none", "devlink", "sh", "-c",
                            "readlink /dev; echo x >/dev/null && head -c3 /dev/zero | wc -c")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["/run/missing/dev", "3"]
    finally:
        clean_agent.cli("rmi", "devlink:latest")
