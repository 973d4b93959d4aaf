"""A fault-injection soak on netns hosts: `make soak` (SOAK_S seconds, default 600) or
`python -m tests.soak --seconds N [--seed S]`; tests/cluster/test_soak.py runs a short one.

    three netns hosts (tests/multihost.py), a 3-member etcd on loopback, two scheduler replicas
    using all three members, a stack of three services (two with health checks); then, from a
    seeded schedule, one fault or operation at a time, each healed after a while:
      agent-kill      SIGKILL a host's agent, start it again (its containers run on meanwhile)
      host-stop       SIGSTOP a host's agent for longer than its node lease, then SIGCONT
      partition       drop the host's traffic with iptables inside its netns (eth0 in and out)
      etcd-kill       SIGKILL an etcd member, start it again on its data
      etcd-hang       SIGSTOP an etcd member (alive but silent), then SIGCONT
      leader-kill     SIGKILL the leading scheduler, start it again
      scale           change a service's replicas (up or down), as a user would
      update          a rolling update (`service update --env-add`) of a health-checked service
      drain           `node drain` a host (its tasks migrate off), check it is empty, `node activate`
      migrate         write a file in a task's container, migrate it to another host, live and cold
                      in turn (cold only without CRIU): the file must be there, one copy left
      migrate-kill    the same, and SIGKILL the source's or the target's agent while the move is in
                      flight (then start it again): one copy after, the file intact in it
      disk-fill       fill the last host's state directory (a DISK_MIB tmpfs of its own) to ~97 %:
                      its agent must refuse new work naming the full disk, the scheduler must mark
                      the node and place nothing there, what runs goes on; then free it: it must
                      take work again

An observer checks the invariants twice a second, from the hosts' kernels (the containers' init
processes and their labels on disk, not the scheduler's view), and after every recovery from etcd
and the containers' own filesystems:
  double     two running copies of one task slot on different hosts, outside a fault and its
             fencing grace (a partitioned or stopped host keeps its containers until it is back)
  recovery   after a fault is healed, every service back at its desired count, running, healthy
             where it has a health check, one copy per slot, within RECOVERY_BOUND seconds
             (p50/p99 reported)
  leak       an etcd key left behind by a removed task: an address allocation whose owner task
             is gone from /dockyard/tasks/, a migration record with no migration running, more
             finished tasks kept for one slot than the history limit
  lost       a migrated container's written file missing or changed, read from the running
             copy's root (/proc/PID/root) on whichever host runs it; at the end: a service or a
             desired replica of the stack missing
  orphan     at the end: a running container the scheduler does not have running on that node
The seed is printed first, so a failing run can be replayed with --seed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from protos import cluster_pb2 as cpb
from tests.cluster_harness import SchedulerProcess, cli, tasks
from tests.etcd_server import EtcdCluster, EtcdServer
from tests.multihost import Cluster, Host, alive, cluster, join, wait_for

NODE_TTL = 3              # the scheduler's default node lease
RECOVERY_BOUND = 60.0     # seconds from a fault's heal to the stack converged again
FENCING_GRACE = 20.0      # after a host is back: its stale copies are stopped within this
HISTORY = 5               # finished tasks the scheduler keeps per slot (its default)
SERVICES = {"web": 3, "worker": 2, "solo": 1}
HEALTHY = ("web", "worker")  # services with a health check: a task counts once it is healthy
HEALTHCHECK = """
    healthcheck:
      test: ["CMD-SHELL", "test -f /tmp/up"]
      interval: 1s
      timeout: 2s
      retries: 2"""
STACK = "".join(f"""
  {name}:
    image: busybox:latest
    command: ["sh", "-c", "touch /tmp/up; trap 'exit 0' TERM; while :; do sleep 1 & wait; done"]{
        HEALTHCHECK if name in HEALTHY else ""}
    deploy:
      replicas: {n}
      restart_policy: {{condition: any, delay: 1s}}
      update_config: {{parallelism: 1, delay: 0s, failure_action: rollback}}
""" for name, n in SERVICES.items())
KINDS = ("agent-kill", "host-stop", "partition", "etcd-kill", "etcd-hang", "leader-kill", "scale", "update",
         "drain", "migrate", "migrate-kill", "disk-fill")
DISK_MIB = 96             # the tmpfs under the last host's state directory (busybox and a few containers)


@dataclass
class Fault:
    kind: str
    target: str
    at: float
    healed: float = 0.0
    recovered: float = 0.0     # seconds from heal to converged; 0 while not yet
    at_wall: float = field(default_factory=time.time)  # the fault's start on the scheduler's clock

    @property
    def outage(self) -> float:
        """Seconds from the fault's start to converged (includes the time it was held)."""
        return self.healed - self.at + self.recovered if self.recovered else 0.0


@dataclass
class Report:
    seed: int
    seconds: float
    faults: list[Fault] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = ["| fault | injected | recovered | after heal: p50 s | worst s | from the start: p50 s | worst s |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for kind in KINDS:
            fs = [f for f in self.faults if f.kind == kind]
            if not fs:
                continue
            rec = [f.recovered for f in fs if f.recovered]
            out = [f.outage for f in fs if f.recovered]
            rows.append(f"| {kind} | {len(fs)} | {len(rec)} | {statistics.median(rec) if rec else 0:.1f} | "
                        f"{max(rec, default=0):.1f} | {statistics.median(out) if out else 0:.1f} | "
                        f"{max(out, default=0):.1f} |")
        rec = sorted(f.recovered for f in self.faults if f.recovered)
        p99 = rec[min(len(rec) - 1, int(len(rec) * 0.99))] if rec else 0.0
        by = Counter(v.split(":", 1)[0] for v in self.violations)
        return "\n".join([f"soak: seed {self.seed}, {self.seconds:.0f} s, load {os.getloadavg()[0]:.1f}",
                          *rows, f"recovery p50 {statistics.median(rec) if rec else 0:.1f} s, p99 {p99:.1f} s",
                          f"violations by kind: {dict(by) or 'none'}",
                          *[f"  {v}" for v in self.violations[:20]],
                          f"faults injected: {len(self.faults)}", f"violations: {len(self.violations)}"])


class Soak:
    def __init__(self, c: Cluster, etcd: EtcdCluster, scheds: list[SchedulerProcess], base: Path,
                 seed: int, kinds: tuple[str, ...] = KINDS) -> None:
        self.c, self.etcd, self.scheds, self.base = c, etcd, scheds, base
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.report = Report(seed, 0.0)
        self.desired = dict(SERVICES)
        self.faulty: dict[str, float] = {}   # host -> until when its copies may be doubled
        self.lock = threading.Lock()
        self.stop = threading.Event()
        from agent.checkpoint.criu import find_criu

        self.criu = find_criu() is not None
        self.moves = 0                       # migrations so far: live and cold take turns
        self.files: dict[str, str] = {}      # task id -> the token its /root/soak must hold

    # --- what runs, seen from the hosts' kernels

    @staticmethod
    def inits(h: Host) -> list[tuple[str, str, int]]:
        """(service.slot, task id, init pid) of every container whose init process is alive on host h."""
        out = []
        for pidfile in (h.root / "containers").glob("*/init.pid"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads(pidfile.read_text())
                if not alive(int(info["pid"]), info.get("start_time")):
                    continue
                cfg = json.loads((pidfile.parent / "config.json").read_text())
                labels = cfg.get("labels") or cfg.get("config", {}).get("labels") or {}
                if "dockyard.task" in labels:
                    out.append((f"{labels['dockyard.service']}.{labels['dockyard.slot']}", labels["dockyard.task"],
                                int(info["pid"])))
        return out

    @classmethod
    def copies(cls, h: Host) -> list[tuple[str, str]]:
        """(service.slot, task id) of every container whose init process is alive on host h."""
        return [(slot, task) for slot, task, _ in cls.inits(h)]

    def leader(self) -> SchedulerProcess:
        for s in self.scheds:
            if s.proc is not None and s.proc.poll() is None:
                with contextlib.suppress(Exception):
                    if s.status().leader:
                        return s
        raise RuntimeError("no leading scheduler")

    def live_scheduler(self) -> SchedulerProcess:
        return next(s for s in self.scheds if s.proc is not None and s.proc.poll() is None)

    @property
    def addresses(self) -> str:
        return ",".join(s.address for s in self.scheds)

    def gap(self) -> str:
        """What keeps the stack from being converged ("" when it is): every service at its count,
        running, one copy per task over all hosts' kernels, on the task's node."""
        try:
            ts = [t for t in tasks(self.live_scheduler()) if t.desired_state == "running"]
        except Exception as e:
            return f"no scheduler answers ({type(e).__name__})"
        per = Counter(t.service.removeprefix("soak_") for t in ts if t.state == "running"
                      and (t.healthy == "healthy" or t.service.removeprefix("soak_") not in HEALTHY))
        short = [f"{name} {per.get(name, 0)}/{n}" for name, n in self.desired.items() if per.get(name, 0) != n]
        if short:
            odd = [f"{t.name} on {t.node or '-'} {t.state}{' ' + t.healthy if t.healthy else ''}"
                   f"{': ' + t.error[:120] if t.error else ''}" for t in ts
                   if t.state != "running" or (t.healthy != "healthy" and t.service.removeprefix("soak_") in HEALTHY)]
            return "running (and healthy where checked): " + ", ".join(short) + (f" ({'; '.join(odd[:4])})" if odd else "")
        where: dict[str, list[str]] = {}
        for h in self.c:
            for _, task in self.copies(h):
                where.setdefault(task, []).append(h.name)
        wrong = [f"{t.name} on {t.node} has copies on {where.get(t.id, [])}" for t in ts if where.get(t.id) != [t.node]]
        wanted = {t.id for t in ts}
        wrong += [f"a stale copy of task {task[:12]} runs on {hosts}" for task, hosts in where.items()
                  if task not in wanted]
        return "; ".join(wrong[:3])

    def check_doubles(self) -> None:
        now = time.monotonic()
        slots: dict[str, set[str]] = {}
        for h in self.c:
            for slot, _ in self.copies(h):
                slots.setdefault(slot, set()).add(h.name)
        with self.lock:
            excused = {h for h, until in self.faulty.items() if until > now}
        for slot, hosts in slots.items():
            if len(hosts) > 1 and not hosts & excused:
                self.violation(f"double: {slot} runs on {sorted(hosts)}")

    def check_files(self) -> None:
        """Every migrated container still holds the file written in it before its move: read from
        the running copy's own root, on whichever host runs it (the kernel's view, not an exec)."""
        ts = {t.id: t for t in tasks(self.live_scheduler()) if t.desired_state == "running"}
        running = {task: (h, pid) for h in self.c for _, task, pid in self.inits(h)}
        for task, token in list(self.files.items()):
            if task not in ts:  # replaced (its host was lost, a rolling update): a new container
                del self.files[task]
                continue
            if task not in running:
                continue  # not running now: gap() reports it
            h, pid = running[task]
            try:
                got = Path(f"/proc/{pid}/root/root/soak").read_text().strip()
            except OSError as e:
                got = f"({e.strerror})"
            if got != token:
                self.violation(f"lost: {ts[task].name}'s /root/soak on {h.name} holds {got!r}, not {token!r}")

    def etcd_kvs(self, prefix: str) -> list[tuple[bytes, bytes]]:
        for m in self.etcd.members:
            if m.process.poll() is None:
                with contextlib.suppress(Exception):
                    return m.range(prefix)
        raise RuntimeError("no etcd member answers")

    def leaks(self) -> list[str]:
        """etcd keys a removed task left behind (read from etcd itself, not through the scheduler)."""
        kvs = self.etcd_kvs("/dockyard/")
        task_ids: set[str] = set()
        finished: Counter[tuple[str, int]] = Counter()
        allocs: list[tuple[str, dict[str, object]]] = []
        migrations: list[str] = []
        for k, v in kvs:
            key = k.decode(errors="replace")
            if key.startswith("/dockyard/tasks/"):
                task_ids.add(key.rsplit("/", 1)[1])
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    d = json.loads(v)
                    if d.get("desired_state") == "shutdown" and d.get("state") in (
                            "complete", "failed", "rejected", "shutdown"):
                        finished[(str(d["service"]), int(d["slot"]))] += 1
            elif key.startswith("/dockyard/net/ipam/"):
                with contextlib.suppress(ValueError):
                    allocs.append((key, json.loads(v)))
            elif key.startswith("/dockyard/migrations/"):
                migrations.append(key)
        out = [f"leak: {key} is owned by task {str(d.get('task_id'))[:12]}, which is gone" for key, d in allocs
               if ":" not in str(d.get("task_id", ":")) and d.get("task_id") not in task_ids]
        out += [f"leak: {key} is left with no migration running" for key in migrations]
        out += [f"leak: {svc}.{slot} keeps {n} finished tasks (history limit {HISTORY})"
                for (svc, slot), n in finished.items() if n > HISTORY]
        return out

    def check_keys(self) -> None:
        """After a recovery: no key left behind. The leader's loop may be one pass behind, so a leak
        counts only if it is still there a few seconds later."""
        first = set(self.leaks())
        if first:
            time.sleep(5)
            for what in first & set(self.leaks()):
                self.violation(what)

    def violation(self, what: str) -> None:
        with self.lock:
            if what not in self.report.violations:
                self.report.violations.append(what)
        print(f"soak: VIOLATION {what}", flush=True)

    def observe(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(OSError):
                self.check_doubles()

    # --- faults

    def excuse(self, host: str, until: float) -> None:
        with self.lock:
            self.faulty[host] = max(self.faulty.get(host, 0.0), until)

    def inject(self, kind: str) -> Fault:
        rng = self.rng
        hold = rng.uniform(NODE_TTL + 2, NODE_TTL + 6)  # longer than a lease: the node goes down
        if kind in ("agent-kill", "host-stop", "partition"):
            h = rng.choice(list(self.c))
            f = Fault(kind, h.name, time.monotonic())
            self.excuse(h.name, float("inf"))
            if kind == "agent-kill":
                assert h.proc is not None
                h.proc.kill()
                h.proc.wait()
                time.sleep(hold)
                h.restart_agent()
            elif kind == "host-stop":
                assert h.proc is not None
                os.kill(h.proc.pid, signal.SIGSTOP)
                time.sleep(hold)
                os.kill(h.proc.pid, signal.SIGCONT)
            else:
                rules = [["INPUT", "-i", "eth0"], ["OUTPUT", "-o", "eth0"]]
                for r in rules:
                    h.run("iptables", "-I", *r, "-j", "DROP", check=True)
                time.sleep(hold)
                for r in rules:
                    h.run("iptables", "-D", *r, "-j", "DROP", check=True)
            f.healed = time.monotonic()
            self.excuse(h.name, f.healed + FENCING_GRACE)
        elif kind in ("etcd-kill", "etcd-hang"):
            i = rng.randrange(len(self.etcd.members))
            m = self.etcd.members[i]
            f = Fault(kind, f"etcd{i + 1}", time.monotonic())
            if kind == "etcd-kill":
                argv = Path(f"/proc/{m.process.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
                self.etcd.kill9(i)
                time.sleep(hold)
                restart_member(m, argv)
            else:
                os.kill(m.process.pid, signal.SIGSTOP)
                time.sleep(hold)
                os.kill(m.process.pid, signal.SIGCONT)
            f.healed = time.monotonic()
        elif kind == "leader-kill":
            s = self.leader()
            f = Fault(kind, s.address, time.monotonic())
            assert s.proc is not None
            s.proc.kill()
            s.proc.wait()
            time.sleep(rng.uniform(1, 4))
            s.start(timeout=60)
            f.healed = time.monotonic()
        elif kind in ("migrate", "migrate-kill"):
            f = self.migrate(kill=kind == "migrate-kill")
        elif kind == "update":
            name = rng.choice(HEALTHY)
            f = Fault(kind, f"soak_{name}", time.monotonic())
            gen = f"{rng.getrandbits(32):08x}"
            r = cli(self.addresses, "service", "update", "--env-add", f"SOAK_GEN={gen}", f"soak_{name}", timeout=180)
            if r.returncode != 0:
                self.violation(f"update: `service update --env-add SOAK_GEN={gen} soak_{name}` failed: "
                               f"{(r.stdout + r.stderr).strip()[-300:]}")
            f.healed = time.monotonic()
        elif kind == "drain":
            f = self.drain()
        elif kind == "disk-fill":
            f = self.fill_disk(hold)
        else:
            name = rng.choice(list(SERVICES))
            n = rng.choice([x for x in (1, 2, 3, 4) if x != self.desired[name]])
            f = Fault(kind, f"{name}={n}", time.monotonic())
            r = cli(self.addresses, "service", "scale", f"soak_{name}={n}", timeout=60)
            if r.returncode != 0:
                self.violation(f"scale: `service scale soak_{name}={n}` failed: {r.stderr.strip()[-300:]}")
            else:
                self.desired[name] = n
            f.healed = time.monotonic()
        self.report.faults.append(f)
        return f

    def write_file(self, t: cpb.TaskInfo, h: Host) -> None:
        """A token in the task's /root/soak, as a user's data: check_files() reads it back after
        every move, from the running copy's root on whichever host has it."""
        token = f"{self.rng.getrandbits(64):016x}"
        r = h.cli("exec", f"{t.name}.{t.id}", "sh", "-c", f"echo {token} > /root/soak")
        if r.returncode != 0:
            self.violation(f"migrate: writing the file in {t.name} on {h.name} failed: {r.stderr.strip()[-200:]}")
        else:
            self.files[t.id] = token

    def migrate(self, kill: bool = False) -> Fault:
        """Move a running task (any service's, so the health-checked ones move too) to another
        host, live and cold in turn; with kill, SIGKILL the source's or the target's agent while
        the move is in flight and start it again: the move may fail, but one copy must be left,
        and unless the task was replaced (its node's lease ran out meanwhile), its file in it."""
        kind = "migrate-kill" if kill else "migrate"
        ts = [t for t in tasks(self.live_scheduler()) if t.state == "running" and t.desired_state == "running"]
        f = Fault(kind, "soak", time.monotonic())
        if not ts:
            f.healed = time.monotonic()
            return f
        t = self.rng.choice(ts)
        src = next(h for h in self.c if h.name == t.node)
        to = self.rng.choice([h.name for h in self.c if h.name != t.node])
        how = ("--live", "--cold")[self.moves % 2] if self.criu else "--cold"
        self.moves += 1
        f.target = f"{t.name} {how[2:]} to {to}"
        self.write_file(t, src)
        # While it moves, the source's copy is frozen (and, live, kept until the target has its
        # pages) beside the target's: two init processes of one slot, not two running copies.
        # Once the command returns exactly one copy must be left (gap() checks it).
        before = {h: self.faulty.get(h, 0.0) for h in (src.name, to)}
        for h in (src.name, to):
            self.excuse(h, float("inf"))
        if not kill:
            m = cli(self.addresses, "migrate", t.name, "--to", to, how, timeout=180)
        else:
            victim = self.rng.choice([src, next(h for h in self.c if h.name == to)])
            f.target += f", {'source' if victim is src else 'target'} agent killed"
            out: list[subprocess.CompletedProcess[str]] = []
            mover = threading.Thread(target=lambda: out.append(
                cli(self.addresses, "migrate", t.name, "--to", to, how, timeout=180)), daemon=True)
            mover.start()
            mover.join(self.rng.uniform(0.3, 2.5))  # in flight: freezing, dumping or sending
            victim.restart_agent(hard=True)
            mover.join(200)
            m = out[0] if out else subprocess.CompletedProcess([], 1, "", "the migrate command did not return")
        f.healed = time.monotonic()
        grace = FENCING_GRACE if kill else 2.0
        for h in (src.name, to):
            with self.lock:
                self.faulty[h] = max(before[h], f.healed + grace)
        if m.returncode != 0 and not kill:
            self.violation(f"migrate: {t.name} {how} to {to} failed: {(m.stdout + m.stderr).strip()[-300:]}")
        elif kill:
            f.target += ", moved" if m.returncode == 0 else ", not moved"
        return f

    def drain(self) -> Fault:
        """`node drain` a host: its tasks migrate off (live where both ends can), each keeping its
        file; then nothing of the stack runs there; `node activate` lets tasks come back."""
        h = self.rng.choice(list(self.c))
        f = Fault("drain", h.name, time.monotonic())
        for t in tasks(self.live_scheduler()):
            if t.node == h.name and t.state == "running" and t.desired_state == "running":
                self.write_file(t, h)
        before = dict(self.faulty)
        for x in self.c:  # every move freezes a source beside its target
            self.excuse(x.name, float("inf"))
        r = cli(self.addresses, "node", "drain", h.name, timeout=300)
        if r.returncode != 0:
            self.violation(f"drain: `node drain {h.name}` failed: {(r.stdout + r.stderr).strip()[-300:]}")
        elif left := self.copies(h):
            self.violation(f"drain: {h.name} still runs {sorted(s for s, _ in left)} after `node drain`")
        a = cli(self.addresses, "node", "activate", h.name, timeout=60)
        if a.returncode != 0:
            self.violation(f"drain: `node activate {h.name}` failed: {a.stderr.strip()[-300:]}")
        f.healed = time.monotonic()
        with self.lock:
            for x in self.c:
                self.faulty[x.name] = max(before.get(x.name, 0.0), f.healed + 2.0)
        return f

    def node_pressure(self, name: str) -> str:
        nodes = self.live_scheduler().stub.ListNodes(cpb.Empty(), timeout=10).nodes
        return next((n.pressure for n in nodes if n.name == name), "")

    def fill_disk(self, hold: float) -> Fault:
        """The last host's disk ~97 % full: refused with a reason, marked, nothing placed there, then freed."""
        h = self.c[len(list(self.c))]
        f = Fault("disk-fill", h.name, time.monotonic())
        filler = h.root / "soak-fill"
        st = os.statvfs(h.root)
        fill = max(0, st.f_bavail * st.f_frsize - int(0.03 * st.f_blocks * st.f_frsize))
        try:
            with open(filler, "wb") as out:
                os.posix_fallocate(out.fileno(), 0, fill)
            try:
                wait_for(lambda: self.node_pressure(h.name), 15, f"the scheduler marking {h.name}'s full disk")
            except Exception as e:
                self.violation(f"disk: {e}")
            r = h.cli("create", "busybox", "true")
            if r.returncode == 0 or "disk almost full" not in r.stderr:
                self.violation(f"disk: `create` on {h.name} with its disk full was not refused for it: "
                               f"exit {r.returncode}, {(r.stdout + r.stderr).strip()[-200:]}")
            # nor may a migration bring work there: refused, by the scheduler or the target's agent
            away = [t for t in tasks(self.live_scheduler()) if t.node != h.name and t.state == "running"
                    and t.desired_state == "running"]
            if away:
                m = cli(self.addresses, "migrate", away[0].name, "--to", h.name, "--cold", timeout=120)
                if m.returncode == 0 or "disk" not in (m.stdout + m.stderr):
                    self.violation(f"disk: `migrate {away[0].name} --to {h.name}` with its disk full was not "
                                   f"refused for it: exit {m.returncode}, {(m.stdout + m.stderr).strip()[-200:]}")
            # a scale-up now must land elsewhere
            name = "worker"
            n = self.desired[name] + 1
            r = cli(self.addresses, "service", "scale", f"soak_{name}={n}", timeout=60)
            if r.returncode != 0:
                self.violation(f"scale: `service scale soak_{name}={n}` failed: {r.stderr.strip()[-300:]}")
            else:
                self.desired[name] = n
            time.sleep(hold)
            placed = [t.name for t in tasks(self.live_scheduler(), f"soak_{name}")
                      if t.node == h.name and t.desired_state == "running" and t.created_at >= f.at_wall]
            if placed:
                self.violation(f"disk: {placed} placed on {h.name} while its disk was full")
        finally:
            filler.unlink(missing_ok=True)
        try:
            wait_for(lambda: not self.node_pressure(h.name), 15, f"{h.name} taking work again once space freed")
        except Exception as e:
            self.violation(f"disk: {e}")
        f.healed = time.monotonic()
        return f

    def wait_recovered(self, f: Fault) -> None:
        deadline = f.healed + RECOVERY_BOUND
        why = ""
        while time.monotonic() < deadline:
            why = self.gap()
            if not why:
                f.recovered = max(time.monotonic() - f.healed, 0.001)
                with contextlib.suppress(OSError):
                    self.check_files()
                self.check_keys()
                return
            time.sleep(0.5)
        self.violation(f"recovery: not converged {RECOVERY_BOUND:.0f} s after {f.kind} {f.target}: {why}")

    # --- the run

    def run(self, seconds: float) -> Report:
        p = self.base / "soak.yaml"
        p.write_text("services:" + STACK)
        r = cli(self.addresses, "deploy", "-f", str(p), "--name", "soak", timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"deploy failed: {r.stderr}")
        t0 = time.monotonic()
        first = Fault("deploy", "soak", t0, healed=t0)
        self.wait_recovered(first)
        print(f"soak: the stack converged in {first.recovered:.1f} s", flush=True)
        watcher = threading.Thread(target=self.observe, daemon=True)
        watcher.start()
        start = time.monotonic()
        try:
            while time.monotonic() - start < seconds:
                kind = self.rng.choice(self.kinds)
                f = self.inject(kind)
                self.wait_recovered(f)
                print(f"soak: {time.monotonic() - start:6.1f} s  {f.kind:<12} {f.target:<22} held "
                      f"{f.healed - f.at:4.1f} s, converged {f.recovered:.1f} s after" if f.recovered else
                      f"soak: {f.kind} {f.target}: not converged", flush=True)
                time.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            self.stop.set()
            watcher.join(timeout=10)
        self.report.seconds = time.monotonic() - start
        self.final_checks()
        self.check_files()
        self.check_keys()
        return self.report

    def final_checks(self) -> None:
        s = self.live_scheduler()
        ts = tasks(s)
        running = {(t.id, t.node) for t in ts if t.desired_state == "running" and t.state == "running"}
        for h in self.c:
            for slot, task in self.copies(h):
                if (task, h.name) not in running:
                    self.violation(f"orphan: {slot} (task {task[:12]}) runs on {h.name}, the scheduler "
                                   "does not have it running there")
        names = {sv.name for sv in s.stub.ListServices(cpb.ListServicesRequest(), timeout=10).services}
        for name, n in self.desired.items():
            if f"soak_{name}" not in names:
                self.violation(f"lost: service soak_{name} is gone")
            got = len([t for t in ts if t.service == f"soak_{name}" and t.state == "running"
                       and t.desired_state == "running"])
            if got != n:
                self.violation(f"lost: soak_{name} has {got} of {n} replicas running at the end")


def own_disk(h: Host) -> None:
    """Give host h's state directory a filesystem of its own (a DISK_MIB tmpfs, its present files
    copied in), so that disk-fill fills that and not the machine's disk. Its agent must be stopped:
    join() starts it again on it. The cluster's destroy() unmounts it with the rest under its base."""
    h.stop()
    tmp = h.root.with_name("root-tmpfs")
    tmp.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0711", "soak-disk", str(tmp)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{h.root}/.", str(tmp)], check=True)
        subprocess.run(["mount", "--move", str(tmp), str(h.root)], check=True)
    except BaseException:
        subprocess.run(["umount", str(tmp)], check=False)
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.rmdir()


def restart_member(m: EtcdServer, argv: list[str]) -> None:
    """A killed member starts again on its data, with its original flags: it rejoins its cluster."""
    with open(m.log_path, "ab") as log:
        m.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
    if not m._wait_ready(30):
        raise RuntimeError(f"etcd member {m.endpoint} did not come back: {m._log_tail()}")


@contextlib.contextmanager
def soak_cluster(base: Path, busybox_tar: Path, seed: int, kinds: tuple[str, ...] = KINDS) -> Iterator[Soak]:
    with cluster(3, base, busybox_tar) as c, EtcdCluster(3).start() as etcd:
        scheds = [SchedulerProcess(base / f"s{i}", etcd=etcd.endpoints, listen=f"{c.gateway}:{_port()}")
                  for i in (1, 2)]
        try:
            for s in scheds:
                s.start()
            addresses = ",".join(s.address for s in scheds)
            own_disk(c[len(list(c))])
            for h in c:
                join(h, addresses)
            from agent.checkpoint.criu import find_criu

            criu = find_criu() is not None  # then agents re-register once `criu check` has run
            wait_for(lambda: len([n for n in scheds[0].stub.ListNodes(cpb.Empty(), timeout=5).nodes
                                  if n.status == "ready" and (n.capabilities.criu or not criu)]) == 3, 60,
                     "3 nodes ready" + (" with CRIU" if criu else ""))
            yield Soak(c, etcd, scheds, base, seed, kinds)
        finally:
            for s in scheds:
                if s.proc is not None and s.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(s.proc.pid, signal.SIGCONT)
                s.stop()
            for m in etcd.members:
                with contextlib.suppress(ProcessLookupError):
                    if m.process.poll() is None:
                        os.kill(m.process.pid, signal.SIGCONT)


def _port() -> int:
    from tests.agent_harness import free_port

    return free_port()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_S", "600")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or None)
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"the faults and operations to draw from, comma-separated (default: all: {', '.join(KINDS)})")
    a = ap.parse_args(argv)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        ap.error(f"--kinds: {'unknown ' + ', '.join(bad) if bad else 'none given'}; known: {', '.join(KINDS)}")
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"soak: seed {seed} (replay: python -m tests.soak --seed {seed} --seconds {a.seconds:g})", flush=True)
    from tests.images import busybox_tar

    with tempfile.TemporaryDirectory(prefix="dockyard-soak-") as tmp:
        base = Path(tmp)
        tar = busybox_tar(base / "busybox.tar")
        with soak_cluster(base / "c", tar, seed, kinds) as s:
            report = s.run(a.seconds)
    print(report.table(), flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
