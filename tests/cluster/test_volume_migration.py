"""Migration carries a container's volumes: cold and live, 100 MiB of a named volume kept to the
byte (sha256 at both ends), removed from the source only once the target runs the container; a
move that cannot keep its mounts is refused before anything stops."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess, free_port, import_busybox
from tests.kernel.test_mount_propagation import _optional_fields, shared_dir  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.slow]

MIB = 1 << 20


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, busybox_tar_path: Path) -> Iterator[tuple[AgentProcess, AgentProcess]]:
    from agent.checkpoint.criu import find_criu

    if find_criu() is None:
        pytest.skip("CRIU is not installed (deploy/install-criu.sh)")
    a = AgentProcess(tmp_path_factory.mktemp("source"))
    b = AgentProcess(tmp_path_factory.mktemp("target"))
    for x in (a, b):
        x.tcp = f"127.0.0.1:{free_port()}"  # type: ignore[attr-defined]
        x.extra_args = ["--listen", x.tcp, "--insecure"]  # type: ignore[attr-defined]
    try:
        a.start()
        b.start()
        import_busybox(a, busybox_tar_path)
        yield a, b
    finally:
        a.destroy()
        b.destroy()


def _mountpoint(a: AgentProcess, name: str) -> Path:
    return Path(json.loads(a.cli("volume", "inspect", name, check=True).stdout)[0]["Mountpoint"])


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = Path(dirpath, f)
            st = p.lstat()
            h.update(f"{p.relative_to(root)} {st.st_mode:o} {st.st_uid}:{st.st_gid}\n".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            else:
                with open(p, "rb") as fh:
                    while chunk := fh.read(MIB):
                        h.update(chunk)
    return h.hexdigest()


def _fill(a: AgentProcess, cid: str) -> str:
    """100 MiB of random bytes in the volume, a link and an owned file: the digest inside."""
    a.cli("exec", cid, "sh", "-c", "head -c 104857600 /dev/urandom > /data/big; ln -s big /data/link; "
          "mkdir -p /data/d; echo x > /data/d/f; chown 999:999 /data/d/f; chmod 640 /data/d/f", check=True,
          timeout=120)
    return a.cli("exec", cid, "sha256sum", "/data/big", check=True).stdout.split()[0]


def _cleanup(a: AgentProcess, b: AgentProcess) -> None:
    for x in (a, b):
        x.remove_all_containers()
        names = x.cli("volume", "ls", "-q").stdout.split()
        if names:
            x.cli("volume", "rm", "-f", *names)


@pytest.mark.parametrize("mode", ["--cold", "--live"])
def test_migration_carries_a_100_mib_volume(pair: tuple[AgentProcess, AgentProcess], mode: str) -> None:
    a, b = pair
    try:
        cid = a.run_detached("--name", "db", "-v", "pgdata:/data", "-v", "/scratch", "busybox", "sh", "-c",
                             "exec 3>>/data/log; while :; do echo tick >&3; sleep 0.1; done")
        inside = _fill(a, cid)
        a.cli("exec", cid, "sh", "-c", "echo anon > /scratch/f", check=True)
        anon = a.inspect(cid)["Mounts"][1]["Name"]
        src = _mountpoint(a, "pgdata")
        assert hashlib.sha256((src / "big").read_bytes()).hexdigest() == inside
        if mode == "--live":  # post-copy wherever both ends can (known once `criu check` ran)
            for x in (a, b):
                x.wait_for(lambda x=x: "Post-copy migration: yes" in x.cli("info").stdout, 20, what="post-copy")
        r = a.cli("migrate", mode, "--to", b.tcp, "db", timeout=300)  # type: ignore[attr-defined]
        assert r.returncode == 0, r.stderr
        assert mode == "--cold" or "post-copy" in r.stderr, r.stderr
        # the source copy and its volumes are gone; the target runs it with them
        assert a.cli("ps", "-aq").stdout == ""
        assert a.cli("volume", "ls", "-q").stdout == ""
        assert not src.exists()
        assert b.inspect("db")["State"]["Running"]
        assert set(b.cli("volume", "ls", "-q", check=True).stdout.split()) == {"pgdata", anon}
        dst = _mountpoint(b, "pgdata")
        assert b.cli("exec", "db", "sha256sum", "/data/big", check=True).stdout.split()[0] == inside
        assert hashlib.sha256((dst / "big").read_bytes()).hexdigest() == inside
        assert os.readlink(dst / "link") == "big"
        st = (dst / "d" / "f").stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (999, 999, 0o640)
        assert b.cli("exec", "db", "cat", "/scratch/f", check=True).stdout == "anon\n"
        n = (dst / "log").read_text().count("tick")
        b.wait_for(lambda: (dst / "log").read_text().count("tick") > n, what="the moved container writing on")
    finally:
        _cleanup(a, b)


def test_migration_refused_before_anything_stops(pair: tuple[AgentProcess, AgentProcess], tmp_path: Path) -> None:
    a, b = pair
    try:
        host = tmp_path / "conf"
        host.mkdir()
        cid = a.run_detached("--name", "pinned", "-v", f"{host}:/conf", "-v", "keep:/data", "busybox", "sleep", "600")
        a.cli("exec", cid, "sh", "-c", "echo mine > /data/f", check=True)
        shutil.rmtree(host)  # as if the target host had no such path (both agents share this file system)
        r = a.cli("migrate", "--cold", "--to", b.tcp, "pinned")  # type: ignore[attr-defined]
        assert r.returncode != 0 and f"bind mount source {host} does not exist on this host" in r.stderr, r.stderr
        assert a.inspect("pinned")["State"]["Running"]  # never stopped
        a.cli("rm", "-f", "pinned", check=True)
        # a volume of that name on the target: refused, and neither copy is touched
        cid = a.run_detached("--name", "clash", "-v", "keep:/data", "busybox", "sleep", "600")
        b.cli("volume", "create", "keep", check=True)
        r = a.cli("migrate", "--live", "--to", b.tcp, "clash")  # type: ignore[attr-defined]
        assert r.returncode != 0 and "volume keep already exists on this host" in r.stderr, r.stderr
        assert a.inspect("clash")["State"]["Running"]
        assert (_mountpoint(a, "keep") / "f").read_text() == "mine\n"
        # shared with another container here: it cannot move
        b.cli("volume", "rm", "keep", check=True)
        a.run_detached("--name", "other", "-v", "keep:/k", "busybox", "sleep", "600")
        r = a.cli("migrate", "--cold", "--to", b.tcp, "clash")  # type: ignore[attr-defined]
        assert r.returncode != 0 and "volume keep is also used by other (running)" in r.stderr, r.stderr
        assert a.inspect("clash")["State"]["Running"]
    finally:
        _cleanup(a, b)


def test_live_migration_keeps_a_shared_bind_in_its_peer_group(pair: tuple[AgentProcess, AgentProcess],
                                                              shared_dir: Path) -> None:  # noqa: F811
    """-v SRC:DST:rshared moved live: on the target the bind is a peer of the target host's SRC
    (here the same host), not a peer group of its own as criu alone would restore it; and a target
    whose SRC is not a shared mount is refused before anything stops."""
    a, b = pair
    try:
        a.run_detached("--name", "peer", "-v", f"{shared_dir}:/mnt:rshared", "busybox", "sleep", "600")
        subprocess.run(["mount", "--make-private", str(shared_dir)], check=True)
        r = a.cli("migrate", "--live", "--to", b.tcp, "peer")  # type: ignore[attr-defined]
        assert r.returncode != 0 and f"bind mount source {shared_dir}: path {shared_dir} is mounted on " \
            f"{shared_dir} but it is not a shared mount" in r.stderr, r.stderr
        assert a.inspect("peer")["State"]["Running"]  # never stopped
        subprocess.run(["mount", "--make-shared", str(shared_dir)], check=True)
        group = next(f for f in _optional_fields(Path("/proc/self/mountinfo").read_text(), str(shared_dir))
                     if f.startswith("shared:"))
        a.cli("migrate", "--live", "--to", b.tcp, "peer", check=True, timeout=120)  # type: ignore[attr-defined]
        pid = b.inspect("peer")["State"]["Pid"]
        assert _optional_fields(Path(f"/proc/{pid}/mountinfo").read_text(), "/mnt") == [group]
    finally:
        _cleanup(a, b)
