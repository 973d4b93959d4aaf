"""The image commands end to end through the CLI and a real agent: save/load (docker-archive and
OCI), history, prune, system df, and --format json on every list."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = pytest.mark.root


def _build(a: AgentProcess, tmp: Path, tag: str, content: str) -> str:
    ctx = tmp / f"ctx-{tag.replace(':', '-')}"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY msg /msg\nCMD [\"cat\", \"/msg\"]\n")
    (ctx / "msg").write_text(content)
    a.cli("build", "-q", "-t", tag, str(ctx), check=True)
    return str(json.loads(a.cli("image", "inspect", tag, check=True).stdout)[0]["Id"])


@pytest.mark.slow
def test_save_and_load_round_trip(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    image_id = _build(a, tmp_path, "saved:1", "saved and loaded\n")
    out = tmp_path / "img.tar"
    a.cli("save", "-o", str(out), "saved:1", check=True)
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert "manifest.json" in names and "repositories" in names
    oci = tmp_path / "img-oci.tar"
    a.cli("image", "save", "--format", "oci", "-o", str(oci), "saved:1", check=True)
    with tarfile.open(oci) as tf:
        assert {"index.json", "oci-layout"} <= set(tf.getnames())
    a.cli("rmi", "saved:1", check=True)
    assert a.cli("image", "inspect", "saved:1").returncode != 0
    r = a.cli("load", "-i", str(out), check=True)
    assert r.stdout == "Loaded image: saved:1\n"
    assert a.cli("run", "--rm", "saved:1").stdout == "saved and loaded\n"
    assert json.loads(a.cli("image", "inspect", "saved:1", check=True).stdout)[0]["Id"] == image_id
    a.cli("rmi", "saved:1", check=True)
    r = a.cli("image", "load", "-i", str(oci), check=True)
    assert "Loaded image: saved:1" in r.stdout
    assert a.cli("run", "--rm", "saved:1").stdout == "saved and loaded\n"
    # A failed save leaves no file under the asked name; a broken archive loads nothing.
    r = a.cli("save", "-o", str(tmp_path / "none.tar"), "no-such-image:1")
    assert r.returncode != 0 and not (tmp_path / "none.tar").exists()
    (tmp_path / "broken.tar").write_bytes(out.read_bytes()[:4096])
    r = a.cli("load", "-i", str(tmp_path / "broken.tar"))
    assert r.returncode != 0 and "Error response from daemon" in r.stderr


@pytest.mark.slow
def test_history_prune_and_df(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    _build(a, tmp_path, "prune-me:1", "one\n")
    hist = json.loads(a.cli("history", "--format", "json", "prune-me:1", check=True).stdout)
    assert [h["empty_layer"] for h in hist] == [True, False, False]
    assert hist[0]["created_by"] == '/bin/sh -c #(nop)  CMD ["cat", "/msg"]'
    df = json.loads(a.cli("system", "df", "--format", "json", check=True).stdout)
    rows = {r["type"]: r for r in df["rows"]}
    assert rows["Images"]["total"] >= 2 and rows["Build Cache"]["total"] >= 1
    assert any("prune-me:1" in i["repo_tags"] for i in df["images"])
    table = a.cli("system", "df", check=True).stdout.splitlines()
    assert table[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    ls = json.loads(a.cli("image", "ls", "--format", "json", check=True).stdout)
    assert all(i.get("repo_tags") for i in ls), [i for i in ls if not i.get("repo_tags")]  # build steps are hidden
    old = _build(a, tmp_path, "prune-me:1", "one\n")
    _build(a, tmp_path, "prune-me:1", "two\n")  # the first build is now dangling: untagged, nothing on it
    dangling = json.loads(a.cli("image", "ls", "--format", "json", check=True).stdout)
    assert [i["id"] for i in dangling if not i.get("repo_tags")] == [old]
    r = a.cli("image", "prune", "-f", check=True)
    assert f"deleted: {old}" in r.stdout
    assert "deleted: sha256:" in r.stdout and "Total reclaimed space:" in r.stdout
    df = json.loads(a.cli("system", "df", "--format", "json", check=True).stdout)
    cache = {r["type"]: r for r in df["rows"]}["Build Cache"]
    # the COPY step of "two", and the two contexts kept unpacked for the next build (their files'
    # bytes: a Dockerfile of 42 and a msg of 4 each), which image prune leaves and builder prune takes
    assert cache["total"] == 3 and cache["active"] == 0
    contexts = 2 * (len((tmp_path / "ctx-prune-me-1" / "Dockerfile").read_bytes()) + 4)
    assert cache["size"] >= contexts and cache["reclaimable"] == cache["size"]
    steps_size = cache["size"] - contexts
    contexts_dir = a.root / "images" / "tmp" / "contexts"
    assert len(list(contexts_dir.iterdir())) == 2
    r = a.cli("builder", "prune", "-f", check=True)
    assert r.stdout == f"Total reclaimed space: {contexts}B\n", r.stdout
    assert list(contexts_dir.iterdir()) == []
    df = json.loads(a.cli("system", "df", "--format", "json", check=True).stdout)
    cache = {r["type"]: r for r in df["rows"]}["Build Cache"]
    assert cache["total"] == 1 and cache["size"] == steps_size  # the COPY step alone
    a.cli("rmi", "prune-me:1", check=True)  # rmi takes the build steps below it along, as docker's
    df = json.loads(a.cli("system", "df", "--format", "json", check=True).stdout)
    assert {r["type"]: r for r in df["rows"]}["Build Cache"]["total"] == 0
    assert a.cli("images", check=True).stdout.count("busybox ") == 1  # tagged images stay
    assert a.cli("image", "prune", "-f", check=True).stdout == "Total reclaimed space: 0B\n"


def test_build_error_exit_code_and_quiet(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM no-such-base:1\n")
    r = a.cli("build", str(ctx))
    assert r.returncode == 1 and "Dockerfile line 1: FROM no-such-base:1" in r.stderr
    r = a.cli("build", str(tmp_path / "missing"))
    assert r.returncode == 1 and "not found" in r.stderr


@pytest.mark.slow  # three containers from the CLI: over 2 s at load 20
def test_run_rm_rootfs_is_volatile_and_a_kept_container_is_not(clean_agent: AgentProcess) -> None:
    """`run --rm` (its writable layer goes at its exit) mounts its rootfs with overlay's volatile:
    the exit's umount does not sync the host's filesystem. A container that stays does not."""
    from agent.images.snapshotter import overlay_has_volatile

    if not overlay_has_volatile():
        pytest.skip("overlayfs here predates volatile (Linux 5.10)")
    a = clean_agent

    def root_options(*run: str) -> list[str]:
        out = a.cli("run", *run, "--network", "none", "busybox", "cat", "/proc/self/mountinfo", check=True).stdout
        line = next(ln for ln in out.splitlines() if ln.split()[4] == "/")
        return line.split(" - ", 1)[1].split()[-1].split(",")

    volatile = root_options("--rm")
    assert "volatile" in volatile or "fsync=volatile" in volatile, volatile
    kept = root_options("--name", "kept-rootfs")
    assert "volatile" not in kept and "fsync=volatile" not in kept, kept
    a.cli("rm", "kept-rootfs", check=True)
