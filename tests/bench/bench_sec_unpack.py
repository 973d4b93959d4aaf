"""Unpack speed, before and after the safe-path layer apply (issue 17), with umoci and GNU tar as peers.

One ~50 MB layer shaped like a distribution's: 300 directories, 4,000 files (most small, a few of
a few MB), 400 symlinks, 100 hardlinks. Measured, each the median of --repeat runs:

* ``apply``: agent.images.layers.apply_layer of the plain tar into a fresh directory, in-process;
* ``import``: ImageStore.import_tar (apply + content store + records), in-process;
* ``load``: agent.images.archive.load of a docker-archive holding it, in-process;

each as wall time and as the CPU time (user + system) of the process doing it -- on a machine
shared by eight engineers the wall time swings with the load, the CPU time much less -- and
each for the tree at ``--before`` (a git ref: the code before the fix, default deb894c) and for the
working tree, alternating run by run so load changes hit both; and as peers ``umoci unpack`` of
an OCI layout with the same layer and ``tar -xf`` (C, no checks) of it (their wall time, and
their CPU time as the children's rusage). Everything is written under --dir (default /dev/shm, a
tmpfs: the cost of the code, not of the disk).

    .venv/bin/python -m tests.bench sec-unpack        (or tests/bench/bench_sec_unpack.py --repeat 5)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve()
REPO = _HERE.parents[2]
sys.path[:0] = [str(REPO)]

from tests.bench.common import load  # noqa: E402

# Runs in a fresh interpreter with PYTHONPATH at the tree to measure; prints seconds as JSON.
CHILD = r"""
import io, json, os, resource, shutil, sys, time
from pathlib import Path
from agent.images import ImageStore
from agent.images import archive
from agent.images.layers import apply_layer
what, layer, arch, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
work.mkdir()
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t, c = time.perf_counter(), cpu()
if what == "apply":
    (work / "fs").mkdir()
    with open(layer, "rb") as f:
        apply_layer(f, work / "fs")
elif what == "import":
    with open(layer, "rb") as f:
        ImageStore(work / "store").import_tar(f, "bench:1")
else:
    with open(arch, "rb") as f:
        archive.load(ImageStore(work / "store"), f)
print(json.dumps([time.perf_counter() - t, cpu() - c]))
"""


def make_layer(path: Path, seed: int = 17) -> int:
    rng = random.Random(seed)
    dirs = [f"usr/d{i:03d}" for i in range(300)]
    sizes = [rng.choice([200, 1_000, 4_000, 12_000, 40_000]) for _ in range(3_990)] + [1_000_000] * 10
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tf.addfile(info)

        add_dir("usr")
        for d in dirs:
            add_dir(d)
        files = []
        for i, size in enumerate(sizes):
            name = f"{dirs[i % len(dirs)]}/f{i:05d}"
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
            tf.addfile(info, io.BytesIO(rng.randbytes(size)))
            files.append(name)
        for i in range(400):
            info = tarfile.TarInfo(f"{dirs[i % len(dirs)]}/s{i:04d}")
            info.type, info.linkname = tarfile.SYMTYPE, f"f{i:05d}"
            tf.addfile(info)
        for i in range(100):
            info = tarfile.TarInfo(f"{dirs[(i + 1) % len(dirs)]}/h{i:04d}")
            info.type, info.linkname = tarfile.LNKTYPE, files[i * 7]
            tf.addfile(info)
    return path.stat().st_size


def docker_archive(layer: Path, out: Path) -> None:
    data = layer.read_bytes()
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    cname = hashlib.sha256(config).hexdigest() + ".json"
    with tarfile.open(out, "w") as tf:
        for name, body in ((cname, config), ("layer.tar", data),
                           ("manifest.json", json.dumps([{"Config": cname, "RepoTags": ["bench:1"],
                                                         "Layers": ["layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))


def oci_layout(layer: Path, out: Path) -> None:
    data = layer.read_bytes()
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(body: bytes) -> tuple[str, int]:
        d = hashlib.sha256(body).hexdigest()
        (blobs / d).write_bytes(body)
        return "sha256:" + d, len(body)

    ld, ln = put(data)
    cd, cn = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode())
    md, mn = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd,
                                        "size": cn},
                             "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld,
                                         "size": ln}]}).encode())
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
         "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))


def timed_cmd(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU (the child's user + system) seconds of a command."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before", default="deb894c")
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else "/var/tmp")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-unpack-", dir=args.dir) as tmp_s:
        tmp = Path(tmp_s)
        layer = tmp / "layer.tar"
        size = make_layer(layer)
        arch = tmp / "image.tar"
        docker_archive(layer, arch)
        oci_layout(layer, tmp / "oci")
        before = tmp / "before"
        before.mkdir()
        tree = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "agent"], check=True,
                              capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=tree, check=True)
        trees = {"before": before, "after": REPO}
        print(f"layer: {size / 1e6:.1f} MB, 4,000 files, 400 symlinks, 100 hardlinks; before = {args.before}")
        print(f"load average at start {load()}")
        results: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        n = 0
        for _ in range(args.repeat):
            for what in ("apply", "import", "load"):
                for label, path in trees.items():
                    n += 1
                    work = tmp / f"w{n}"
                    out = subprocess.run([sys.executable, "-c", CHILD, what, str(layer), str(arch), str(work)],
                                         check=True, capture_output=True, text=True,
                                         env={**os.environ, "PYTHONPATH": str(path)}).stdout
                    wall, used = json.loads(out)
                    results.setdefault((what, label), []).append(wall)
                    cpu.setdefault((what, label), []).append(used)
                    shutil.rmtree(work)
            for name, cmd in (("umoci unpack", ["umoci", "unpack", "--image", f"{tmp / 'oci'}:bench"]),
                              ("tar -xf", ["tar", "-xf", str(layer), "--same-owner", "-p", "-C"])):
                work = tmp / "peer"
                if name == "tar -xf":
                    work.mkdir()
                wall, used = timed_cmd([*cmd, str(work)])
                results.setdefault(("peer", name), []).append(wall)
                cpu.setdefault(("peer", name), []).append(used)
                shutil.rmtree(work)
        print(f"load average at end {load()}\n")
        for title, table in (("wall time", results), ("CPU time (user + system)", cpu)):
            med = {k: statistics.median(v) for k, v in table.items()}
            umoci, gtar = med[("peer", "umoci unpack")], med[("peer", "tar -xf")]
            print(f"{title}, median of {args.repeat}:")
            print(f"{'what':<10} {'before (s)':>11} {'after (s)':>10} {'after/before':>13} {'after/umoci':>12} "
                  f"{'after/tar':>10}")
            for what in ("apply", "import", "load"):
                b, a = med[(what, "before")], med[(what, "after")]
                print(f"{what:<10} {b:>11.3f} {a:>10.3f} {a / b:>13.2f} {a / umoci:>12.2f} {a / gtar:>10.2f}")
            print(f"{'umoci':<10} {umoci:>11.3f}\n{'tar -xf':<10} {gtar:>11.3f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
