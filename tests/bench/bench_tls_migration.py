"""Live migration downtime with mutual TLS and CRIU's page server over `criu --tls`, beside the same
move in plaintext, in the same run (issue 13's target: TLS downtime <= plaintext + 10 %).

    .venv/bin/python -m tests.bench tls_migration     [--mib 100] [--repeat 3]

Four agents on loopback: a plaintext pair (`--listen --insecure`) and a TLS pair, whose node
certificates, a scheduler's grant and the CRL are made here by the production code (common/pki.py,
common/grants.py), as the leader would send them. The moves alternate (plaintext, TLS, plaintext,
...), each a busybox shell holding --mib MiB of touched memory, post-copy (lazy pages) where the
agents offer it; downtime and total are the agent's own figures (MigrateProgress "done").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import grants, pki
from protos import agent_pb2 as pb
from tests.agent_harness import AgentProcess, free_port, import_busybox
from tests.bench.bench_migration import _pid, _run, hold_cmd, med
from tests.bench.common import free_subnet, load, machine, rss_mib
from tests.cluster_harness import wait_for


def _tls_pair(work: Path) -> tuple[AgentProcess, AgentProcess, pki.Bundle, pki.CA]:
    """Two agents holding node certificates of one CA (IP SAN 127.0.0.1: CRIU's page server is
    checked by address), and a scheduler bundle of that CA to sign grants with."""
    ca = pki.make_ca("benchtls")
    agents = []
    for n in ("tls-src", "tls-dst"):
        a = AgentProcess(work / n)
        node = f"bench{os.urandom(4).hex()}"
        pki.write_bundle(a.root / "tls", pki.issue_bundle(ca, node_id=node, role="agent", sans=[pki.node_name(node)],
                                                          ips=["127.0.0.1"]))
        a.node_id = node  # type: ignore[attr-defined]
        agents.append(a)
    sched = pki.issue_bundle(ca, node_id="bench-scheduler", role="scheduler", sans=[pki.SCHEDULER_NAME])
    return agents[0], agents[1], sched, ca


def _move(src: AgentProcess, dst: AgentProcess, mib: int, tag: str, tls: tuple[pki.Bundle, pki.CA] | None
          ) -> tuple[float, float, bool]:
    """(downtime s, total s, post-copy) of one live move of a shell holding ``mib`` MiB."""
    name = f"tlsbench-{tag}"
    cid = _run(src, name, hold_cmd(mib))
    try:
        wait_for(lambda: src.cli("exec", cid, "test", "-e", "/tmp/ready").returncode == 0, 120, f"{mib} MiB held")
        req = pb.MigrateRequest(id=cid, target=dst.tcp, live=True)  # type: ignore[attr-defined]
        if tls is not None:
            sched, ca = tls
            req.target_node = dst.node_id  # type: ignore[attr-defined]
            req.grant = grants.sign(sched, grants.Grant(migration=tag, container=name, source=src.node_id,  # type: ignore[attr-defined]
                                                        target=dst.node_id, not_after=time.time() + 300))  # type: ignore[attr-defined]
            req.crl = pki.make_crl(ca, [])
        done = None
        phases = []
        for p in src.stub.MigrateContainer(req, timeout=600):
            phases.append(p.phase)
            if p.phase == "done":
                done = p
        if done is None:
            raise RuntimeError(f"{tag}: no 'done' ({phases})")
        after = rss_mib(_pid(dst, name))
        if after < mib * 0.95:
            raise AssertionError(f"{tag}: the restored shell holds {after:.0f} MiB, not {mib}")
        return done.downtime_seconds, done.total_seconds, "pages" in phases
    finally:
        for x in (src, dst):
            with contextlib.suppress(Exception):
                x.stub.RemoveContainer(pb.RemoveContainerRequest(id=name, force=True))


def main(argv: list[str] | None = None) -> int:
    from agent.checkpoint.criu import find_criu
    from tests.images import busybox_tar

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or find_criu() is None:
        print("bench_tls_migration: needs root and criu >= 4 (deploy/install-criu.sh)", file=sys.stderr)
        return 2
    print(f"machine at start: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="bench-tls-migration-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    plain = (AgentProcess(work / "plain-src"), AgentProcess(work / "plain-dst"))
    c, d, sched, ca = _tls_pair(work)
    agents = [*plain, c, d]
    used: set[str] = set()
    for x in agents:
        x.subnet = free_subnet(used)
        used.add(x.subnet.rsplit(".", 1)[0])
        x.tcp = f"127.0.0.1:{free_port()}"  # type: ignore[attr-defined]
        x.extra_args = ["--listen", x.tcp, *(["--insecure"] if x in plain else [])]  # type: ignore[attr-defined]
    got: dict[str, list[tuple[float, float, bool]]] = {"plaintext": [], "TLS": []}
    try:
        tar = busybox_tar(work / "busybox.tar")
        for x in agents:
            x.start()
            import_busybox(x, tar)
        for rep in range(args.repeat):
            for mode in ("plaintext", "TLS"):
                src, dst = plain if mode == "plaintext" else (c, d)
                r = _move(src, dst, args.mib, f"{mode.lower()}-{rep}", (sched, ca) if mode == "TLS" else None)
                got[mode].append(r)
                print(f"run {rep + 1} {mode:<9}: downtime {r[0] * 1000:.0f} ms, total {r[1]:.2f} s, "
                      f"post-copy {r[2]} (load {load()})", flush=True)
    finally:
        for x in agents:
            with contextlib.suppress(Exception):
                x.destroy()
        shutil.rmtree(work, ignore_errors=True)
    down = {m: med([r[0] for r in v]) for m, v in got.items()}
    total = {m: med([r[1] for r in v]) for m, v in got.items()}
    print(f"\nlive migration of {args.mib} MiB, median of {args.repeat} (load at the end {load()}):")
    print(f"{'':<10} {'downtime':>9} {'total':>8}")
    for m in got:
        print(f"{m:<10} {down[m] * 1000:>7.0f}ms {total[m]:>7.2f}s")
    ratio = down["TLS"] / down["plaintext"]
    print(f"TLS downtime = {ratio:.2f}x plaintext (target <= 1.10x); total {total['TLS'] / total['plaintext']:.2f}x")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
