"""Restore of a checkpoint archive with a hostile rootfs-diff.tar, through a real agent: the archive
(cold: no CRIU images, so no CRIU is needed) goes to RestoreContainer as a migration's target gets
it; the diff is applied as a layer with the same checks as any image layer. The host is checked
after each case, and a refused archive leaves no container behind. And the agent's
--max-layer-size, end to end through `dockyard import` and `dockyard load`."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.checkpoint import archive as ckpt
from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess
from tests.kernel.test_images_hostile import CASES, Host, _layers, _oci_layout, layer_tar, make_host

pytestmark = [pytest.mark.root, pytest.mark.slow]

# The cases that reach the host the most directly; the whole table runs on the other entry points.
PICKED = ["dir-then-symlink-to-host-file", "symlinked-parent", "write-through-symlink",
          "hardlink-through-symlink", "dotdot-name"]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)


@pytest.fixture
def source_config(clean_agent: AgentProcess) -> Iterator[dict[str, object]]:
    cid = clean_agent.cli("create", "--name", "ckpt-src", "busybox", "true", check=True).stdout.strip()
    yield json.loads((clean_agent.root / "containers" / cid / "config.json").read_text())
    clean_agent.cli("rm", "-f", "ckpt-src")


@pytest.mark.parametrize(("case", "layers", "outcome"), [c for c in CASES if c[0] in PICKED],
                         ids=[c[0] for c in CASES if c[0] in PICKED])
def test_hostile_rootfs_diff_in_a_checkpoint_archive(clean_agent: AgentProcess, source_config: dict[str, object],
                                                     host: Host, case: str,
                                                     layers: list[list[tuple[object, ...]]], outcome: str) -> None:
    before = host.snapshot()
    diff = host.store / "rootfs-diff.tar"
    diff.write_bytes(_layers(host, layers)[0])
    buf = io.BytesIO()
    ckpt.pack(buf, config=source_config, spec={}, images_dir=None, rootfs_diff=diff, network=None, stats={})
    chunks = [pb.RestoreChunk(header=pb.RestoreHeader(name=f"evil-{case[:20]}", cold=True)),
              pb.RestoreChunk(data=buf.getvalue())]
    try:
        clean_agent.stub.RestoreContainer(iter(chunks), timeout=60)
    except grpc.RpcError as e:
        assert outcome == "refused", f"{case}: refused unexpectedly: {e.details()}"  # type: ignore[attr-defined]
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()  # type: ignore[attr-defined]
        assert "rootfs-diff.tar" in e.details()  # type: ignore[attr-defined]
        names = clean_agent.cli("ps", "-a", "--format", "json", check=True).stdout
        assert "evil-" not in names
    else:
        assert outcome != "refused", f"{case}: restored, should be refused"
    assert host.snapshot() == before


def test_agent_max_layer_size_refuses_a_bomb_end_to_end(tmp_path: Path) -> None:
    """`dockyard agent --max-layer-size 1m`, then `dockyard import` and `dockyard load` of a layer of
    16 MiB of zeros (16 KB gzip'd): a clear error naming the layer and the flag, nothing stored."""
    a = AgentProcess(tmp_path / "agent")
    a.extra_args = ["--max-layer-size", "1m"]
    try:
        a.start()
        bomb = gzip.compress(layer_tar([("file", "zeros", bytes(16 << 20))]))
        bomb_file = tmp_path / "bomb.tar.gz"
        bomb_file.write_bytes(bomb)
        r = a.cli("import", str(bomb_file), "bomb:1")
        assert r.returncode != 0
        assert "import: expands to more than 1048576 bytes" in r.stderr and "--max-layer-size" in r.stderr
        assert "Traceback" not in r.stderr
        oci = tmp_path / "bomb-oci.tar"
        oci.write_bytes(_oci_layout([layer_tar([("file", "zeros", bytes(16 << 20))])]))
        r = a.cli("load", "-i", str(oci))
        assert r.returncode != 0 and "expands to more than 1048576 bytes" in r.stderr, r.stderr
        assert a.cli("images", "-q", check=True).stdout.strip() == ""
    finally:
        a.destroy()
