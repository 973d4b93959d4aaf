"""Health checks of containers (docker's HEALTHCHECK): while a container with a ContainerConfig
.healthcheck runs, its test is exec'd in it every interval (agent/execsession.py, in-process), and
its health goes starting -> healthy | unhealthy as docker's does: a success makes it healthy, as
many failures in a row as `retries` make it unhealthy, failures within `start_period` of the start
do not count. The last five probes are kept, with their output, for inspect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.execsession import ExecSession
from agent.model import AgentError, Container, HealthCheck, InvalidArgument
from agent.runtime.spec import ProcessSpec

log = logging.getLogger("dockyard.health")

KEEP = 5
MAX_OUTPUT = 4096


@dataclass
class Probe:
    start: float
    end: float
    exit_code: int
    output: str


@dataclass
class Health:
    status: str = "starting"        # starting | healthy | unhealthy
    failing_streak: int = 0
    log: list[Probe] = field(default_factory=list)


def command_of(hc: HealthCheck) -> list[str]:
    kind, args = (hc.test[0], hc.test[1:]) if hc.test else ("NONE", [])
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(args)]
    if kind == "CMD":
        return list(args)
    return []   # NONE


class HealthMonitor:
    def __init__(self, manager: Any) -> None:
        self.m = manager
        self._loop = asyncio.get_running_loop()
        self.health: dict[str, Health] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.on_status: list[Callable[[Container, str], None]] = []
        manager.on_change.append(self._changed)
        manager.on_remove.append(self._gone)
        for c in list(manager.containers.values()):
            self._changed(c)

    def _changed(self, c: Container) -> None:
        hc = c.config.healthcheck
        if hc is None or not command_of(hc):
            return
        if c.state.status == "running":
            if c.id not in self._tasks:
                self.health[c.id] = Health()
                self._mirror(c, self.health[c.id])
                # (the loop's own call: containers start and exit on the loop, never in a thread)
                self._tasks[c.id] = self._loop.create_task(self._probe_loop(c, hc))
        elif c.state.status != "paused" and (t := self._tasks.pop(c.id, None)) is not None:
            t.cancel()

    def _gone(self, c: Container) -> None:
        if (t := self._tasks.pop(c.id, None)) is not None:
            t.cancel()
        self.health.pop(c.id, None)

    def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        self._tasks.clear()

    async def _probe_loop(self, c: Container, hc: HealthCheck) -> None:
        started = time.monotonic()
        h = self.health[c.id]
        try:
            while True:
                starting = hc.start_period and h.status == "starting" and time.monotonic() - started < hc.start_period
                await asyncio.sleep(max(0.1, hc.start_interval if starting else hc.interval))
                if c.state.status == "paused":
                    continue
                if c.state.status != "running":
                    return
                p = await self._probe(c, hc)
                h.log = [*h.log, p][-KEEP:]
                if p.exit_code == 0:
                    h.failing_streak = 0
                    self._set(c, h, "healthy")
                elif time.monotonic() - started >= hc.start_period or h.status != "starting":
                    h.failing_streak += 1
                    if h.failing_streak >= max(1, hc.retries):
                        self._set(c, h, "unhealthy")
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("health checks of %s", c.name)

    def _mirror(self, c: Container, h: Health) -> None:
        """Into the container's own state (inspect, ps, a node's reports to the scheduler)."""
        c.state.health, c.state.health_failing = h.status, h.failing_streak
        c.state.health_log = [{"Start": p.start, "End": p.end, "ExitCode": p.exit_code, "Output": p.output}
                              for p in h.log]

    def _set(self, c: Container, h: Health, status: str) -> None:
        self._mirror(c, h)
        if h.status == status:
            return
        h.status = status
        c.state.health = status
        with contextlib.suppress(Exception):
            self.m.health_changed(c)
        for cb in self.on_status:
            with contextlib.suppress(Exception):
                cb(c, status)

    async def _probe(self, c: Container, hc: HealthCheck) -> Probe:
        t0 = time.time()
        s = ExecSession(self.m, c.id, ProcessSpec(args=command_of(hc)))
        out = bytearray()

        async def run() -> None:
            async for _stream, data in s.output():
                if len(out) < MAX_OUTPUT:
                    out.extend(data[:MAX_OUTPUT - len(out)])

        try:
            s.start()
        except AgentError as e:
            return Probe(t0, time.time(), -1, str(e))
        try:
            await asyncio.wait_for(run(), max(0.1, hc.timeout))
            code = s.exit_code if s.exit_code is not None else -1
            text = out.decode(errors="replace")
        except TimeoutError:
            s.kill()
            code, text = -1, f"Health check exceeded timeout ({hc.timeout:g}s)"
        finally:
            s.close()
        return Probe(t0, time.time(), code, text)


# --- the container's check, from its own flags and its image's HEALTHCHECK --------------------------

def from_image(h: dict[str, Any] | None) -> HealthCheck | None:
    """An image config's Healthcheck (docker's shape, nanoseconds; 0 = the default)."""
    if not h or not h.get("Test"):
        return None
    ns = 1e-9
    return HealthCheck(test=list(h["Test"]), interval=h.get("Interval", 0) * ns or 30.0,
                       timeout=h.get("Timeout", 0) * ns or 30.0, retries=int(h.get("Retries", 0)) or 3,
                       start_period=h.get("StartPeriod", 0) * ns, start_interval=h.get("StartInterval", 0) * ns or 5.0)


def resolve(own: HealthCheck | None, image: HealthCheck | None) -> HealthCheck | None:
    """What the container runs, as docker merges it at create: the run's fields over the image's,
    a 0 (not given: the CLI sends 0) taking the image's or docker's default; NONE stays NONE."""
    if own is None:
        return image
    if own.test and own.test[0] == "NONE":
        return own
    base = image or HealthCheck(test=[])
    test = own.test or base.test
    if not test:
        return None  # only durations given, and the image has no test
    return HealthCheck(test=list(test), interval=own.interval or base.interval or 30.0,
                       timeout=own.timeout or base.timeout or 30.0, retries=own.retries or base.retries or 3,
                       start_period=own.start_period or base.start_period,
                       start_interval=own.start_interval or base.start_interval or 5.0)


def check(h: HealthCheck | None) -> None:
    if h is None:
        return
    if h.test and h.test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise InvalidArgument(f"health check test {h.test!r}: must start with CMD, CMD-SHELL or NONE")
    if h.test and h.test[0] in ("CMD", "CMD-SHELL") and not [a for a in h.test[1:] if a.strip()]:
        raise InvalidArgument("health check: --health-cmd has no command")
    for name in ("interval", "timeout", "start_period", "start_interval"):
        v = getattr(h, name)
        if v < 0 or (name != "start_period" and 0 < v < 0.001):
            raise InvalidArgument(f"--health-{name.replace('_', '-')}: {v}s is out of range (0, or at least 1ms)")
    if h.retries < 0:
        raise InvalidArgument(f"--health-retries: {h.retries} is negative")
