"""Dockerfile builds: the parser (no root) and real builds through the CLI and a real agent (root):
the seed's example and its three layers, the cache, multi-stage, ARG, errors that name the line,
hostile COPY sources, and a busybox httpd image served with run -p."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

SEED = "FROM busybox\nCOPY test /tmp/test\nRUN mkdir /tmp/testdir\n"


# --- parser (no root) ---------------------------------------------------------------------------------











# --- builds through a real agent ------------------------------------------------------------------------

def _context(tmp: Path, dockerfile: str, files: dict[str, str | bytes] | None = None) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        p = ctx / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return ctx


def _build(a: AgentProcess, ctx: Path, *args: str, check: bool = True, timeout: float = 120) -> tuple[str, str]:
    r = a.cli("build", *args, str(ctx), timeout=timeout)
    if check:
        assert r.returncode == 0, f"build failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout, r.stderr


def _image_id(a: AgentProcess, ref: str) -> str:
    return str(json.loads(a.cli("image", "inspect", ref, check=True).stdout)[0]["Id"])


def _no_build_containers(a: AgentProcess) -> None:
    assert a.cli("ps", "-a", "-q").stdout == "", "an intermediate container was left behind"


@pytest.mark.slow
@pytest.mark.root
def test_seed_example_gives_three_layers(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    ctx = _context(tmp_path, SEED, {"test": "hello from the context\n"})
    out, _ = _build(a, ctx, "-t", "seed:1")
    assert "Step 1/3 : FROM busybox" in out
    assert "Step 2/3 : COPY test /tmp/test" in out
    assert "Step 3/3 : RUN mkdir /tmp/testdir" in out
    assert "Successfully tagged seed:1" in out
    _no_build_containers(a)
    hist = json.loads(a.cli("image", "history", "--format", "json", "seed:1", check=True).stdout)
    layers = [h for h in hist if not h["empty_layer"]]
    assert len(layers) == 3, hist
    assert "mkdir /tmp/testdir" in layers[0]["created_by"]
    assert "COPY file:" in layers[1]["created_by"] and "in /tmp/test" in layers[1]["created_by"]
    assert layers[0]["id"] == _image_id(a, "seed:1")
    table = a.cli("image", "history", "seed:1", check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["IMAGE", "CREATED", "CREATED"] and len(table) == 4
    r = a.cli("run", "--rm", "seed:1", "sh", "-c", "cat /tmp/test; test -d /tmp/testdir && echo dir; stat -c %a /tmp")
    assert r.stdout == "hello from the context\ndir\n1777\n", r.stderr  # COPY kept /tmp's mode from busybox


@pytest.mark.slow
@pytest.mark.root
def test_cache_hits_then_misses_after_a_change(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    ctx = _context(tmp_path, SEED, {"test": "one\n"})
    _build(a, ctx, "-t", "cache:1")
    first = _image_id(a, "cache:1")
    out, _ = _build(a, ctx, "-t", "cache:2")
    assert out.count("Using cache") == 2, out
    assert "Running in" not in out
    assert _image_id(a, "cache:2") == first
    (ctx / "test").write_text("two\n")
    out, _ = _build(a, ctx, "-t", "cache:3")
    assert "Using cache" not in out, out  # COPY misses, and so does everything after it
    assert "Running in" in out
    assert _image_id(a, "cache:3") != first
    out, _ = _build(a, ctx, "--no-cache", "-t", "cache:4")
    assert "Using cache" not in out
    assert a.cli("run", "--rm", "cache:4", "cat", "/tmp/test").stdout == "two\n"
    _no_build_containers(a)


@pytest.mark.slow
@pytest.mark.root
def test_multi_stage_copy_from_and_target(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    ctx = _context(tmp_path, (
        "FROM busybox AS builder\n"
        "WORKDIR /src\n"
        "COPY app.sh .\n"
        "RUN mkdir -p out && sed 's/NAME/dockyard/' app.sh > out/app.sh && chmod 755 out/app.sh\n"
        "FROM busybox AS unused\n"
        "RUN exit 1\n"
        "FROM scratch AS final\n"
        "COPY --from=builder /bin/busybox /bin/busybox\n"
        "COPY --from=0 /src/out/ /app/\n"
        "ENTRYPOINT [\"/bin/busybox\", \"sh\", \"/app/app.sh\"]\n"
    ), {"app.sh": "echo hello NAME\n"})
    out, _ = _build(a, ctx, "-t", "multi:1", "--target", "final")
    assert "exit 1" not in out  # a stage the target does not need is not built
    r = a.cli("run", "--rm", "multi:1")
    assert r.stdout == "hello dockyard\n", r.stderr
    out, _ = _build(a, ctx, "-t", "multi:builder", "--target", "builder")
    assert a.cli("run", "--rm", "multi:builder", "cat", "/src/out/app.sh").stdout == "echo hello dockyard\n"
    _no_build_containers(a)


@pytest.mark.slow
@pytest.mark.root
def test_arg_and_build_arg(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    ctx = _context(tmp_path, (
        "ARG BASE=busybox\n"
        "FROM $BASE\n"
        "ARG GREETING=hello\n"
        "ARG WHO\n"
        "ENV PLACE=${WHO:-world}\n"
        "RUN echo \"$GREETING $PLACE\" > /greeting\n"
        "LABEL greeting=$GREETING\n"
    ))
    _build(a, ctx, "-t", "args:1")
    assert a.cli("run", "--rm", "args:1", "cat", "/greeting").stdout == "hello world\n"
    out, _ = _build(a, ctx, "-t", "args:2", "--build-arg", "GREETING=hi", "--build-arg", "WHO=there",
                    "--build-arg", "UNUSED=1")
    assert "[Warning] One or more build-args ['UNUSED'] were not consumed" in out
    assert a.cli("run", "--rm", "args:2", "sh", "-c", "cat /greeting; echo $GREETING").stdout == "hi there\n\n"
    info = json.loads(a.cli("image", "inspect", "args:2", check=True).stdout)[0]
    assert info["Config"]["Labels"] == {"greeting": "hi"}
    assert "PLACE=there" in info["Config"]["Env"]
    assert not any(e.startswith("GREETING=") for e in info["Config"]["Env"])  # ARGs do not persist
    _no_build_containers(a)


@pytest.mark.root
def test_failing_run_names_the_line_and_removes_its_container(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    ctx = _context(tmp_path, "FROM busybox\n\nRUN echo before && \\\n    exit 3\nRUN echo never\n")
    out, err = _build(a, ctx, "-t", "broken:1", check=False)
    assert "before" in out
    assert "Dockerfile line 3: The command '/bin/sh -c echo before &&     exit 3' returned a non-zero code: 3" in err
    assert "never" not in out
    assert a.cli("image", "inspect", "broken:1").returncode != 0
    _no_build_containers(a)


@pytest.mark.root
def test_unknown_instruction_is_refused(clean_agent: AgentProcess, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nCOPPY x /x\n")
    _, err = _build(clean_agent, ctx, check=False)
    assert "Dockerfile line 2: unknown instruction: COPPY" in err


@pytest.mark.root
def test_copy_from_outside_the_context_is_refused(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    (tmp_path / "secret").write_text("outside\n")
    ctx = _context(tmp_path, "FROM busybox\nCOPY ../secret /secret\n")
    _, err = _build(a, ctx, check=False)
    assert "Dockerfile line 2: COPY failed: forbidden path outside the build context: ../secret" in err
    (ctx / "link").symlink_to("/etc/passwd")
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\nCOPY link /x\n")
    _, err = _build(a, ctx, check=False)
    assert "Dockerfile line 3: COPY failed: forbidden path outside the build context: link" in err
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY missing.txt /x\n")
    _, err = _build(a, ctx, check=False)
    assert "Dockerfile line 2: COPY failed: file not found in build context" in err
    _no_build_containers(a)


@pytest.mark.root
def test_copy_globs_chown_dockerignore_and_add_tar(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("pkg/data.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"data\n"))
    ctx = _context(tmp_path, (
        "FROM busybox\n"
        "COPY --chown=nobody:nobody *.txt /files/\n"
        "COPY conf/ /etc/app/\n"
        "ADD pkg.tar.gz /opt/\n"
        "COPY --chmod=0600 plain.bin /plain.bin\n"
    ), {"a.txt": "a\n", "b.txt": "b\n", "c.md": "c\n", "conf/x.conf": "x=1\n", "conf/debug.log": "no\n",
        "pkg.tar.gz": buf.getvalue(), "plain.bin": "p\n", ".dockerignore": "**/*.log\nb.txt\n"})
    _build(a, ctx, "-t", "copy:1")
    r = a.cli("run", "--rm", "copy:1", "sh", "-c",
              "ls /files; stat -c '%U %G' /files/a.txt; ls /etc/app; cat /opt/pkg/data.txt; stat -c %a /plain.bin")
    assert r.stdout.split("\n") == ["a.txt", "nobody nobody", "x.conf", "data", "600", ""], r.stdout + r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.root
def test_busybox_httpd_image_serves_with_run_p(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    ctx = _context(tmp_path, (
        "FROM busybox\n"
        "WORKDIR /www\n"
        "COPY index.html .\n"
        "EXPOSE 80\n"
        "CMD [\"httpd\", \"-f\", \"-v\", \"-p\", \"80\", \"-h\", \"/www\"]\n"
    ), {"index.html": "<h1>hello from dockyard</h1>\n"})
    _build(a, ctx, "-t", "web:1")
    port = _free_port()
    cid = a.run_detached("-p", f"127.0.0.1:{port}:80", "web:1")
    body = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                body = resp.read()
            break
        except OSError:
            time.sleep(0.1)
    assert body == b"<h1>hello from dockyard</h1>\n"
    a.cli("rm", "-f", cid, check=True)
