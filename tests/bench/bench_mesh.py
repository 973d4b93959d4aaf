"""`python -m tests.bench mesh`: service discovery and the routing mesh on 3 netns hosts with real
agents, a scheduler and etcd (tests/multihost.py), peers measured in the same run.

  - convergence: from the start of `dockyard service create -d --network benchnet -p P:80` (the
    whole CLI process) until, on every host, the published port answers through the mesh (from
    the root namespace, as a client would) and, in a client task on every host, the service's
    name resolves at 127.0.0.11 to its VIP and the VIP answers HTTP. Median of --runs.
  - removal: a task killed -> its address gone from every host's mesh rules and from every client's
    VIP rules (the restart delay is 60 s, so the slot's successor does not refill it meanwhile).
  - the data path: TCP request/response (64 B, 3,000 round trips) and one iperf3 stream, from a
    client task on host3 to a task on host1: through the service's VIP against the task's own
    overlay address (the peer: direct container-to-container on the same overlay); and from
    host3's own namespace, where no task runs, through the mesh (host3's address, DNAT + SNAT +
    VXLAN) against that task's ingress address directly.
Published figure for scale: Swarm's routing mesh is IPVS inside an ingress sandbox plus a
docker_gwbridge hop (moby/libnetwork service_linux.go); no same-machine Swarm runs here (dockerd
is started without swarm mode, and swarm init needs a routable address), so only our own peers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from protos import agent_pb2 as apb
from protos import cluster_pb2 as cpb
from tests.agent_harness import free_port
from tests.bench.bench_network import RR
from tests.bench.common import load
from tests.cluster_harness import SchedulerProcess, cli, running, wait_for
from tests.etcd_server import running_etcd
from tests.images import busybox_tar
from tests.multihost import Cluster, Host, http_get, sweep_stale

# from inside a client task's netns: the name resolves to the VIP, and the VIP answers HTTP
PROBE = """
import socket, sys, time
from dnslib import DNSRecord
name, vip = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
while time.monotonic() - t0 < 60:
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.2); u.connect(("127.0.0.11", 53))
        u.send(DNSRecord.question(name).pack())
        ips = [str(r.rdata) for r in DNSRecord.parse(u.recv(4096)).rr]
        if ips == [vip]:
            s = socket.create_connection((vip, 80), timeout=0.3); s.sendall(b"GET /name HTTP/1.0\\r\\n\\r\\n")
            if b"200" in s.recv(4096):
                print(time.time(), flush=True); break
    except OSError:
        pass
    time.sleep(0.01)
"""


def pid_of(h: Host, task_id: str) -> int:
    cs = h.stub.ListContainers(apb.ListContainersRequest(filters={"label": f"dockyard.task={task_id}"}),
                               timeout=5).containers
    return int(cs[0].pid)


def nsnet(pid: int, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv]


def until(pred: Callable[[], bool], timeout: float = 60) -> float:
    """Wall time (time.time()) at which pred first held, polled every 10 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return time.time()
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError("not converged")


def rr(server: list[str], client: list[str], ip: str, port: int = 7300, n: int = 3000) -> tuple[float, float]:
    """64-byte round trips: the server on 7300 in `server`'s netns, the client to ip:port."""
    srv = subprocess.Popen([*server, sys.executable, "-c", RR, "server", "0.0.0.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        code = RR.replace("create_connection((host, 7300)", f"create_connection((host, {port})")
        r = subprocess.run([*client, sys.executable, "-c", code, "client", ip, str(n)], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"RR client to {ip}:{port}: {r.stderr.strip()[-500:]}")
        out = r.stdout
        xs = sorted(float(x) for x in out.split())
        return xs[len(xs) // 2], xs[int(len(xs) * 0.99)]
    finally:
        srv.kill()
        srv.wait()


def iperf(server: list[str], client: list[str], ip: str, port: int = 5201) -> float:
    srv = subprocess.Popen([*server, "iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run([*client, "iperf3", "-c", ip, "-p", str(port), "-t", "3", "-J"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.kill()
        srv.wait()


def _join(h: Host, address: str) -> None:
    base = Host.agent_argv

    def argv(h: Host = h) -> list[str]:
        return [*base(h), "--join", address]

    h.agent_argv = argv  # type: ignore[method-assign]
    h.restart_agent()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    sweep_stale()
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp:
        base = Path(tmp)
        tar = busybox_tar(base / "busybox.tar")
        with running_etcd() as etcd, Cluster(3, base, busybox_tar=tar) as c:
            s = SchedulerProcess(base / "sched", etcd=etcd.endpoint, listen=f"{c.gateway}:{free_port()}",
                                 metrics=False)
            try:
                s.start()
                for h in c:
                    _join(h, s.address)
                wait_for(lambda: len([n for n in s.stub.ListNodes(cpb.Empty(), timeout=2).nodes
                                      if n.status == "ready"]) == 3, 30, "3 nodes")

                def ok(*a: str) -> str:
                    r = cli(s.address, *a)
                    assert r.returncode == 0, f"{a}: {r.stdout}{r.stderr}"
                    return r.stdout

                ok("network", "create", "benchnet")
                ok("service", "create", "-d", "--name", "client", "--mode", "global", "--network", "benchnet",
                   "busybox:latest", "sleep", "36000")
                try:
                    clients = wait_for(lambda: len(running(s, "client")) == 3 and running(s, "client"), 60, "clients")
                except AssertionError:
                    for a in (("service", "ps", "--no-trunc", "client"), ("service", "ls"), ("network", "ls")):
                        r = cli(s.address, *a)
                        print(r.stdout, r.stderr, file=sys.stderr)
                    raise
                cpid = {t.node: pid_of(next(h for h in c if h.name == t.node), t.id) for t in clients}
                print(f"load average before: {load()}", flush=True)

                conv: list[float] = []
                after_start: list[float] = []
                gone: list[float] = []
                def run_once(i: int) -> tuple[float, float]:
                    name, port = f"web{i}", 20000 + free_port() % 10000
                    t0 = time.time()
                    ok("service", "create", "-d", "--name", name, "-p", f"{port}:80", "--network", "benchnet",
                       "--replicas", "2", "--replicas-max-per-node", "1", "--constraint", "node.name!=host3",
                       "--restart-delay", "60s", "busybox:latest", "sh", "-c",
                       "hostname > /tmp/name; exec httpd -f -p 80 -h /tmp")
                    cli_s = time.time() - t0
                    vip = wait_for(lambda n=name: next((v["ip"] for v in json.loads(ok("network", "inspect", "benchnet"))
                                                        [0]["vips"] if v["service"] == n), None), 30, "the VIP")
                    done: list[float] = []
                    errs: list[str] = []

                    def mesh_on(h: Host, p: int = port) -> None:
                        done.append(until(lambda: http_get(f"http://{h.ip}:{p}/name", timeout=0.5).startswith(name)))

                    def vip_in(pid: int, n: str = name, v: str = vip) -> None:
                        r = subprocess.run(nsnet(pid, sys.executable, "-c", PROBE, n, v), capture_output=True,
                                           text=True, timeout=90)
                        (done.append(float(r.stdout.split()[0])) if r.stdout.strip() else errs.append(r.stderr))

                    ts = [threading.Thread(target=mesh_on, args=(h,)) for h in c]
                    ts += [threading.Thread(target=vip_in, args=(p,)) for p in cpid.values()]
                    for t in ts:
                        t.start()
                    for t in ts:
                        t.join()
                    assert len(done) == 6 and not errs, errs
                    conv_s = max(done) - t0
                    started = max(t.state_at for t in running(s, name))
                    after_start.append(max(done) - started)
                    print(f"run {i + 1}: CLI {cli_s * 1000:.0f} ms; converged on 3 hosts (mesh) and 3 clients "
                          f"(name + VIP) in {conv_s:.2f} s, {after_start[-1]:.2f} s after the last task was reported running", flush=True)

                    # one task killed: gone from every host's mesh and every client's VIP rules
                    tasks = running(s, name)
                    victim = tasks[0]
                    net = json.loads(ok("network", "inspect", "benchnet"))[0]
                    ing = json.loads(ok("network", "inspect", "ingress"))[0]
                    vip_ip = {e["task_id"]: e["ip"] for e in net["endpoints"]}[victim.id]
                    ing_ip = {e["task_id"]: e["ip"] for e in ing["endpoints"]}[victim.id]
                    h1 = next(h for h in c if h.name == victim.node)
                    t1 = time.time()
                    h1.cli("kill", f"{victim.name}.{victim.id}")
                    rules = [lambda h=h: f"{ing_ip}:80" not in h.run("iptables", "-w", "-t", "nat", "-S").stdout
                             for h in c]
                    rules += [lambda p=p: vip_ip not in subprocess.run(nsnet(p, "iptables", "-w", "-t", "nat", "-S",
                                                                             "DY-VIP"), capture_output=True,
                                                                       text=True).stdout for p in cpid.values()]
                    gone_s = max(until(r) for r in rules) - t1
                    print(f"run {i + 1}: killed task out of 3 hosts' mesh and 3 clients' VIP in {gone_s:.2f} s",
                          flush=True)
                    ok("service", "rm", name)
                    return conv_s, gone_s

                for i in range(args.runs):
                    a, b = run_once(i)
                    conv.append(a)
                    gone.append(b)
                rows.append(("service create -> mesh on 3 hosts + name/VIP in 3 clients, median",
                             f"{statistics.median(conv):.2f} s", f"{min(conv):.2f}-{max(conv):.2f}", "<= 1 s p99 "
                             "after placement (issue)"))
                rows.append(("last task reported running -> the same, median", f"{statistics.median(after_start):.2f} s",
                             f"{min(after_start):.2f}-{max(after_start):.2f}", ""))
                rows.append(("task killed -> out of every mesh and VIP, median", f"{statistics.median(gone):.2f} s",
                             f"{min(gone):.2f}-{max(gone):.2f}", ""))

                # the data path: one echo task on host1, a client on host3
                ok("service", "create", "-d", "--name", "echo", "-p", "17300:7300", "--network", "benchnet",
                   "--constraint", "node.name==host1", "busybox:latest", "sleep", "36000")
                (et,) = wait_for(lambda: running(s, "echo"), 60, "echo")
                h1, h3 = c[1], c[3]
                epid = pid_of(h1, et.id)
                net = json.loads(ok("network", "inspect", "benchnet"))[0]
                ing = json.loads(ok("network", "inspect", "ingress"))[0]
                vip = next(v["ip"] for v in net["vips"] if v["service"] == "echo")
                direct = next(e["ip"] for e in net["endpoints"] if e["task_id"] == et.id)
                ing_ip = next(e["ip"] for e in ing["endpoints"] if e["task_id"] == et.id)
                srv, cl3 = nsnet(epid), nsnet(cpid["host3"])
                host3 = ["nsenter", f"--net=/run/netns/{h3.netns}", "--"]
                wait_for(lambda: f"{ing_ip}:7300" in h3.run("iptables", "-w", "-t", "nat", "-S").stdout, 30,
                         "the mesh on host3")
                vp50, vp99 = rr(srv, cl3, vip)
                dp50, dp99 = rr(srv, cl3, direct)
                mp50, mp99 = rr(srv, host3, h3.ip, port=17300)
                ip50, ip99 = rr(srv, host3, ing_ip)
                rows.append(("TCP RR p50 / p99 us: VIP vs task address (client task)",
                             f"{vp50:.0f} / {vp99:.0f}", f"{dp50:.0f} / {dp99:.0f}",
                             f"{vp50 / dp50:.2f}x / {vp99 / dp99:.2f}x"))
                rows.append(("TCP RR p50 / p99 us: mesh via host3 vs ingress address",
                             f"{mp50:.0f} / {mp99:.0f}", f"{ip50:.0f} / {ip99:.0f}",
                             f"{mp50 / ip50:.2f}x / {mp99 / ip99:.2f}x"))
                gv = statistics.median(iperf(srv, cl3, vip) for _ in range(3))
                gd = statistics.median(iperf(srv, cl3, direct) for _ in range(3))
                rows.append(("iperf3 1 stream Gbit/s: VIP vs task address", f"{gv:.2f}", f"{gd:.2f}", f"{gv / gd:.2f}x"))
                print(f"load average after: {load()}")
            finally:
                s.stop()
    w = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{w}}  {'dockyard':>16}  {'peer / range':>16}  ratio / target")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>16}  {r[2]:>16}  {r[3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
