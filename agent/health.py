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
from agent.model import AgentError, Container, HealthCheck
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
                await asyncio.sleep(max(0.1, hc.interval))
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

    def _set(self, c: Container, h: Health, status: str) -> None:
        if h.status == status:
            return
        h.status = status
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
