"""vagrant/ for real: `vagrant up` of its Vagrantfile on libvirt (vagrant-libvirt, qemu's emulator, the
isolated private network) boots 2 Debian 12 nodes from the locally built box, and
`dockyard cluster up -i` on the inventory the Vagrantfile writes bootstraps them over SSH: both
nodes ready through the scheduler on node1.

libvirtd, its network and the VMs live in a network and mount namespace of the test
(tests/vm_libvirt.py): the private network reaches the VMs and nothing else, and its bridge,
dnsmasq and LIBVIRT_* chains go with the namespace. `make test-vagrant`, or with `make test-vm`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.vm_box import box
from tests.vm_harness import wait_until
from tests.vm_libvirt import Libvirt, VagrantNodes

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="libvirtd, qemu and the box cache need root"),
              pytest.mark.skipif(os.environ.get("DOCKYARD_TEST_VM") not in ("vagrant", "full"),
                                 reason="vagrant-libvirt, 2 VMs (~10 min): make test-vagrant (DOCKYARD_TEST_VM=vagrant)"),
              pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "deploy.cli"]


def _libvirt_chains() -> list[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return sorted(line for line in out.splitlines() if line.startswith(":LIBVIRT_"))


def test_vagrant_up_on_libvirt_boots_two_nodes_and_cluster_up_bootstraps_them(tmp_path: Path) -> None:
    chains_before = _libvirt_chains()
    b = box()
    timings: dict[str, float] = {}
    with Libvirt(tmp_path) as lv:
        timings["libvirtd started"] = lv.started_s
        with VagrantNodes(lv, 2, b) as v:
            timings.update(v.timings)
            # The private network vagrant-libvirt made is isolated: no <forward>, so no NAT nor route out.
            assert "<forward" not in lv.virsh("net-dumpxml", "dockyard-vagrant")
            inv = yaml.safe_load(v.hosts.read_text())
            assert [h["name"] for h in inv["hosts"]] == ["node1", "node2"]
            out = v.vagrant("ssh", "node1", "-c", "hostname; stat -f -c %T /sys/fs/cgroup; "
                            "busybox ping -c 1 -W 10 192.168.56.12 >/dev/null && echo reaches-node2", timeout=300)
            assert out.split()[:3] == ["node1", "cgroup2fs", "reaches-node2"], out

            t0 = time.monotonic()
            up = lv.run([*CLI, "cluster", "up", "-i", str(v.hosts), "--no-install", "--timeout", "60",
                         "--ready-timeout", "900"], timeout=2400, cwd=REPO, check=False)
            timings["cluster up -i (the Vagrantfile's inventory)"] = time.monotonic() - t0
            print("\n" + up.stdout.strip())
            assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
            env = {**os.environ, "DOCKYARD_SCHEDULER": "192.168.56.11:2377"}

            def ready() -> list[tuple[str, str]] | None:
                nodes = json.loads(lv.run([*CLI, "node", "ls", "--format", "json"], env=env, cwd=REPO).stdout)
                got = sorted((n["name"], n["status"]) for n in nodes)
                return got if got == [("node1", "ready"), ("node2", "ready")] else None

            wait_until("node1 and node2 ready", ready, 300, every=3)
            down = lv.run([*CLI, "cluster", "down", "-i", str(v.hosts)], timeout=600, cwd=REPO, check=False)
            assert down.returncode == 0, f"{down.stdout}\n{down.stderr}"
            t0 = time.monotonic()
        timings["vagrant destroy"] = time.monotonic() - t0
    print("\nvagrant-libvirt timings (TCG):\n" + "\n".join(f"  {k:<46} {s:7.1f} s" for k, s in timings.items()))
    # Everything the test made went with its namespace.
    assert not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(lv.netns)
    assert _libvirt_chains() == chains_before
