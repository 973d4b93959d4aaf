"""The fast image commands (deploy/cli_local_images.py): `build`, `save`, `load` and `import` go to
the agent's local API without click, grpc or protobuf, parse their options as click does, and
give what the click path gives (the same archive byte for byte, the same messages)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import cli, cli_images, options
from deploy.cli_local_images import _plain_tag
from tests.agent_harness import REPO, AgentProcess

# What the fast image commands may not import (the standard library's lighter modules they may:
# they are not ~20 ms commands, they are ~0.5 s ones that lost 0.2 s of imports).
HEAVY = ("grpc", "google.protobuf", "click", "yaml", "asyncssh", "rich", "prometheus_client", "deploy.cli",
         "deploy.cli_images", "agent.images", "protos", "zstandard")


def _run(argv: list[str], stdin: bytes | None = None) -> tuple[int, list[str], bytes, str]:
    """deploy.entry.main(argv) in a fresh `python -I -S` as the launcher runs it: exit status, the
    heavy modules imported, stdout, stderr."""
    import site

    code = ("import sys\n"
            f"sys.path[0:0] = {[str(REPO), *site.getsitepackages()]!r}\n"
            "from deploy.entry import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:  # click's path exits itself\n"
            "    rc = e.code\n"
            f"heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {HEAVY!r}))\n"
            "sys.stderr.write('\\n' + repr([rc, heavy]))\n")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, *argv], capture_output=True, timeout=120,
                       input=stdin)
    err = r.stderr.decode()
    rc, heavy = ast.literal_eval(err.strip().splitlines()[-1])
    return rc, heavy, r.stdout, err.rsplit("\n", 1)[0].rstrip("\n")


@pytest.mark.parametrize(("command", "table", "argv"), [
    ("build", "BUILD", ["-t", "a:1", "--tag=b", "-f", "D", "--build-arg", "K=V", "--no-cache", "--target", "s",
                        "--network", "none", "--label", "l=1", "-q", "ctx"]),
    ("save", "SAVE", ["-o", "x.tar", "--format", "oci", "a", "b"]),
    ("load", "LOAD", ["-q", "-i", "x.tar"]),
])
def test_image_parsers_agree_with_click(command: str, table: str, argv: list[str]) -> None:
    ctx = getattr(cli_images, command).make_context(command, list(argv))
    values, args = options.parse(getattr(options, table), argv)
    positional = {"build": "context_dir", "save": "images", "load": ""}[command]
    if positional:
        values[positional] = args[0] if command == "build" else tuple(args)
    assert values == ctx.params


def test_import_parser_agrees_with_click() -> None:
    argv = ["-c", 'CMD ["sh"]', "--change=ENV A=1", "-m", "msg", "root.tar", "img:1"]
    ctx = cli.import_.make_context("import", list(argv))
    values, args = options.parse(options.IMPORT, argv)
    assert {**values, "source": args[0], "reference": args[1]} == ctx.params


def test_a_format_click_would_refuse_goes_to_click() -> None:
    with pytest.raises(options.Unsupported):
        options.parse(options.SAVE, ["--format", "tar", "a"])


@pytest.mark.parametrize(("tag", "plain"), [
    ("web", True), ("web:1", True), ("a/b/c:v1.2-rc_3", True), ("127.0.0.1:5000/x/y:1", True),
    ("localhost/x", True), ("registry.example.com/team/app", True),
    ("Web:1", False), ("web:", False), ("web:-x", False), ("a//b", False), ("x@sha256:ab", False),
    ("-web", False), ("web:" + "x" * 129, False), ("h:port/x", False), ("caf\u00e9", False),
])
def test_only_tags_surely_valid_take_the_fast_path(tag: str, plain: bool) -> None:
    assert _plain_tag(tag) == plain


# --- with a real agent ------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.slow  # four image round trips through fresh processes
def test_save_load_import_build_the_fast_way(clean_agent: AgentProcess, tmp_path: Path,
                                             busybox_tar_path: Path) -> None:
    host = ["-H", clean_agent.host]
    fast = tmp_path / "fast.tar"
    rc, heavy, _, err = _run([*host, "save", "-o", str(fast), "busybox"])
    assert (rc, heavy, err) == (0, [], "")
    slow = tmp_path / "slow.tar"
    clean_agent.cli("save", "-o", str(slow), "busybox", check=True)  # click and gRPC
    assert fast.read_bytes() == slow.read_bytes()
    # to stdout, and a failed save leaves nothing under either name
    rc, heavy, out, _ = _run([*host, "image", "save", "busybox"])
    assert (rc, heavy) == (0, []) and out == slow.read_bytes()
    rc, heavy, _, err = _run([*host, "save", "-o", str(tmp_path / "no.tar"), "no-such:1"])
    assert (rc, heavy) == (1, []) and err == "Error response from daemon: No such image: no-such:1"
    assert not list(tmp_path.glob("no.tar*"))

    clean_agent.cli("tag", "busybox", "fastcopy:1", check=True)
    clean_agent.cli("rmi", "fastcopy:1", check=True)
    rc, heavy, out, err = _run([*host, "load", "-i", str(fast)])
    assert (rc, heavy, out) == (0, [], b"Loaded image: busybox:latest\n"), err
    rc, heavy, out, err = _run([*host, "load"], stdin=busybox_tar_path.read_bytes())  # a rootfs, not an archive
    assert (rc, heavy) == (1, []) and err.startswith("Error response from daemon: archive: neither manifest.json")

    rc, heavy, out, err = _run([*host, "import", "-c", "ENV FAST=1", "-", "fastimport:1"],
                               stdin=busybox_tar_path.read_bytes())
    assert (rc, heavy) == (0, []) and out.decode().startswith("sha256:"), err
    assert "FAST=1" in clean_agent.cli("image", "inspect", "fastimport:1", check=True).stdout
    rc, heavy, _, err = _run([*host, "import", str(tmp_path / "missing.tar")])
    assert (rc, heavy, err) == (1, [], f"open {tmp_path / 'missing.tar'}: No such file or directory")

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text("FROM fastimport:1\nCOPY hello.txt /hello.txt\nCMD [\"cat\", \"/hello.txt\"]\n")
    rc, heavy, out, err = _run([*host, "build", "-t", "fastbuild:1", str(ctx)])
    assert (rc, heavy) == (0, []), err
    text = out.decode()
    assert text.startswith("Sending build context to dockyard agent") and "Successfully tagged fastbuild:1" in text
    rc, heavy, out, _ = _run([*host, "image", "build", "-q", "-t", "fastbuild:1", str(ctx)])
    assert (rc, heavy) == (0, []) and out.decode().startswith("sha256:")
    r = clean_agent.cli("run", "--rm", "--network", "none", "fastbuild:1", check=True)
    assert r.stdout == "hello\n"
    # a tag the fast path cannot judge goes to click, which words the error
    rc, heavy, _, err = _run([*host, "build", "-t", "Bad:1", str(ctx)])
    assert rc != 0 and "repository name must be lowercase" in err
    for ref in ("fastbuild:1", "fastimport:1"):
        clean_agent.cli("rmi", ref, check=True)


def test_pull_parser_agrees_with_click() -> None:
    ctx = cli_images.pull.make_context("pull", ["-q", "h:5000/a:1"])
    values, args = options.parse(options.PULL, ["-q", "h:5000/a:1"])
    assert {**values, "ref": args[0]} == ctx.params


@pytest.mark.root
@pytest.mark.slow  # a registry, a push and two pulls
def test_pull_the_fast_way(clean_agent: AgentProcess, tmp_path: Path) -> None:
    from tests.kernel.test_images_registry import Registry

    registry = Registry(tmp_path / "registry")
    registry.start()
    try:
        ref = f"{registry.host}/fast/busybox:1"
        clean_agent.cli("tag", "busybox", ref, check=True)
        clean_agent.cli("push", "-q", ref, check=True)
        clean_agent.cli("rmi", ref, check=True)
        rc, heavy, out, err = _run(["-H", clean_agent.host, "pull", "-q", ref])
        assert (rc, heavy, out) == (0, [], f"{ref}\n".encode()), err
        clean_agent.cli("rmi", ref, check=True)
        rc, heavy, out, err = _run(["-H", clean_agent.host, "image", "pull", ref])  # stdout is no terminal
        lines = out.decode().splitlines()
        assert (rc, heavy) == (0, []), err
        assert lines[0] == f"1: Pulling from {registry.host}/fast/busybox" and lines[-1] == ref
        assert any(line.endswith(": Already exists") for line in lines)  # busybox's layer is here
        assert any(line.startswith("Status: Downloaded newer image for") for line in lines)
        # not a plain reference: click's path words the error
        rc, heavy, _, err = _run(["-H", clean_agent.host, "pull", "-q", "fast/UPPER:1"])
        assert rc != 0 and "invalid reference format" in err
        clean_agent.cli("rmi", ref, check=True)
    finally:
        registry.stop()


@pytest.mark.root
def test_the_agent_reads_the_clients_own_file(clean_agent: AgentProcess, tmp_path: Path,
                                              busybox_tar_path: Path) -> None:
    """load -i / import FILE name their descriptor (the agent opens /proc/PID/fd/N of its peer);
    a descriptor that is no regular file, or none, is refused, and the CLI then sends the bytes."""
    import os

    from deploy.local import CallError, LocalClient

    cl = LocalClient(clean_agent.host)
    with open(busybox_tar_path, "rb") as f:
        call = cl.open("ImportImage", file=f.fileno())
        call.send({"import_header": {"reference": "byfd:1"}})
        call.done_sending()
        [summary] = list(call)
        call.close()
    assert summary["repo_tags"] == ["byfd:1"]
    r, w = os.pipe()
    try:
        for fd, why in ((r, "is not a regular file"), (987, "No such file or directory")):
            call = cl.open("Load", "images", file=fd)
            call.done_sending()
            with pytest.raises(CallError) as e:
                list(call)
            call.close()
            assert e.value.code == "FAILED_PRECONDITION" and e.value.details.startswith("file:")
            assert why in e.value.details
    finally:
        os.close(r)
        os.close(w)
    clean_agent.cli("rmi", "byfd:1", check=True)


@pytest.mark.root
def test_a_descriptor_open_only_for_writing_is_not_read(clean_agent: AgentProcess, tmp_path: Path) -> None:
    """The client may not make the agent read what it could not read itself."""
    from deploy.local import CallError, LocalClient

    secret = tmp_path / "secret.tar"
    secret.write_bytes(b"x" * 1024)
    with open(secret, "ab") as f:  # write-only
        call = LocalClient(clean_agent.host).open("Load", "images", file=f.fileno())
        call.done_sending()
        with pytest.raises(CallError, match="not open for reading"):
            list(call)
        call.close()


@pytest.mark.root
def test_save_writes_only_into_a_file_open_for_writing(clean_agent: AgentProcess, tmp_path: Path) -> None:
    """Nor write what it could not write: a save into a read-only descriptor is refused untouched."""
    from deploy.local import CallError, LocalClient

    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    with open(victim, "rb") as f:
        call = LocalClient(clean_agent.host).open("Save", "images", file=f.fileno())
        call.send({"refs": ["busybox"]})
        with pytest.raises(CallError, match="not open for writing"):
            list(call)
        call.close()
    assert victim.read_bytes() == b"keep"
