"""The whole VM run (`make test-vm`): two Debian 12 VMs under qemu (TCG: KVM guests hang here),
`dockyard cluster up -i` over SSH from this machine, then on the guests' own kernel (6.1, cgroup v2
only, systemd):

- the cgroup v2 driver enforces `-m` (OOM kill in memory.events), `--cpus` (cpu.stat throttling)
  and `--pids-limit` (a fork refused, pids.events);
- a stack deployed through the scheduler runs on both VMs;
- a running counter is live-migrated VM1 -> VM2 with CRIU and goes on counting there;
- a container with a written file is cold-migrated and the file is there on the other VM;
- VM2 is killed (its qemu SIGKILLed) and its tasks come back on VM1.
Timings are printed at the end. Everything stays inside the test's qemu processes: user networking
with restrict=on and SSH forwarded from 127.0.0.1, a loopback socket link between the two guests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.vm_cluster import VMDockyard, check_cpu_limit, check_memory_limit, check_pids_limit, vm_dockyard
from tests.vm_harness import wait_until

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.root, pytest.mark.criu,
              pytest.mark.skipif(os.geteuid() != 0, reason="qemu, debootstrap and the box cache need root"),
              pytest.mark.skipif(os.environ.get("DOCKYARD_TEST_VM") != "full",
                                 reason="the whole VM run takes ~15-25 min: `make test-vm` (DOCKYARD_TEST_VM=full)"),
              pytest.mark.timeout(3600)]

STACK = """
services:
  counter:
    image: busybox:latest
    command: ["sh", "-c", "i=0; while :; do i=$$((i+1)); echo $$i; sleep 0.5; done"]
    deploy:
      replicas: 1
      restart_policy: {condition: any, delay: 1s}
  files:
    image: busybox:latest
    command: ["sleep", "1000000"]
    deploy:
      replicas: 1
      restart_policy: {condition: any, delay: 1s}
  web:
    image: busybox:latest
    command: ["httpd", "-f", "-p", "80"]
    deploy:
      replicas: 2
      restart_policy: {condition: any, delay: 1s}
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VMDockyard]:
    with vm_dockyard(2, tmp_path_factory.mktemp("vm")) as d:
        yield d


def _numbers(d: VMDockyard, node: str, container: str) -> list[int]:
    return [int(x) for x in d.dy(d.vm(node), "logs", container).split() if x.isdigit()]


def _other(node: str) -> str:
    return "node2" if node == "node1" else "node1"


def test_guests_run_cgroup_v2_only(d: VMDockyard) -> None:
    for vm in d.vms:
        assert vm.sh("stat -f -c %T /sys/fs/cgroup").strip() == "cgroup2fs"
        assert {"memory", "cpu", "pids"} <= set(vm.sh("cat /sys/fs/cgroup/cgroup.controllers").split())


def test_memory_cpu_and_pids_limits_are_enforced_by_the_v2_driver(d: VMDockyard) -> None:
    vm = d.vms[1]
    t0 = time.monotonic()
    mem, cpu, pids = check_memory_limit(d, vm), check_cpu_limit(d, vm), check_pids_limit(d, vm)
    d.timed("cgroup v2 checks (-m, --cpus, --pids-limit)", t0)
    print(f"\nmemory.events {mem}\ncpu {cpu}\npids.events {pids}")


def test_a_stack_runs_on_both_vms(d: VMDockyard) -> None:
    t0 = time.monotonic()
    d.vms[0].sh("cat > /root/vmt.yaml", input=STACK)
    out = d.dy(d.vms[0], "deploy", "-f", "/root/vmt.yaml", "--name", "vmt")
    print("\n" + out.strip())
    web = d.running("vmt_web", 2)
    d.running("vmt_counter", 1)
    d.running("vmt_files", 1)
    d.timed("stack deployed, 4 tasks running", t0)
    assert {t["node"] for t in web} == {"node1", "node2"}, web  # spread over both


def test_live_migration_of_a_counter_goes_on_counting_on_the_other_vm(d: VMDockyard) -> None:
    (t,) = d.running("vmt_counter", 1)
    name, src = f"{t['name']}.{t['id']}", t["node"]
    wait_until("counting", lambda: len(_numbers(d, src, name)) > 10, 120, every=3)
    to = _other(src)
    t0 = time.monotonic()
    out = d.dy(d.vms[0], "migrate", t["name"], "--to", to, "--live", timeout=600)
    d.timed("live migration VM to VM (whole CLI)", t0)
    print("\n" + out.strip())
    assert f"to {to} (live)" in out, out
    (moved,) = d.running("vmt_counter", 1)
    assert moved["node"] == to and moved["id"] == t["id"]
    got = wait_until("counting on the target", lambda: (n := _numbers(d, to, name)) and len(n) > 3 and n, 120, every=3)
    assert got[0] > 10, got[:5]  # went on from where it was, not from 1
    assert got == list(range(got[0], got[0] + len(got))), got[:20]


def test_cold_migration_keeps_a_written_file(d: VMDockyard) -> None:
    (t,) = d.running("vmt_files", 1)
    name, src = f"{t['name']}.{t['id']}", t["node"]
    d.dy(d.vm(src), "exec", name, "sh", "-c", "echo written-on-$(hostname) > /root/f")
    before = d.dy(d.vm(src), "exec", name, "cat", "/root/f")
    to = _other(src)
    t0 = time.monotonic()
    out = d.dy(d.vms[0], "migrate", t["name"], "--to", to, "--cold", timeout=600)
    d.timed("cold migration VM to VM (whole CLI)", t0)
    print("\n" + out.strip())
    assert "(cold)" in out, out
    (moved,) = d.running("vmt_files", 1)
    assert moved["node"] == to
    assert d.dy(d.vm(to), "exec", name, "cat", "/root/f") == before


def test_a_killed_vm_s_tasks_come_back_on_the_other(d: VMDockyard) -> None:
    node2 = d.vm("node2")
    lost = [t for s in ("vmt_web", "vmt_counter", "vmt_files") for t in d.tasks(s) if t["node"] == "node2"]
    assert lost, "nothing runs on node2"
    t0 = time.monotonic()
    node2.kill()

    def back() -> bool:
        ts = {t["name"]: t for s in ("vmt_web", "vmt_counter", "vmt_files") for t in d.tasks(s)}
        return all(ts.get(t["name"], {}).get("node") == "node1" and ts[t["name"]].get("state") == "running"
                   for t in lost)

    wait_until("node2's tasks running on node1", back, 300, every=2)
    d.timed(f"VM killed -> its {len(lost)} tasks running on the other", t0)
