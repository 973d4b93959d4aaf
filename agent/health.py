"""Health checks of every container that has one (its own, or its image's HEALTHCHECK), run by the
agent for a standalone host and a cluster node alike, as docker's daemon runs them.

    starting --(a check passes)--> healthy --(retries checks fail in a row)--> unhealthy
    (failures within start_period do not count; a pass makes it healthy again)

Each check is the test command run in the container as `exec` runs one (through the agent's own
Exec, on its socket), killed after `timeout`. The state is the container's (ContainerState.health,
health_failing, health_log): inspect shows it as docker's State.Health, ps as "(healthy)", and a
cluster node reports it to the scheduler, whose rolling updates wait for healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent.model import Container, HealthCheck, InvalidArgument

log = logging.getLogger("dockyard.agent.health")

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_START_INTERVAL = 5.0
LOG_KEEP = 5
OUTPUT_MAX = 4096


def from_image(h: dict[str, Any] | None) -> HealthCheck | None:
    """An image config's Healthcheck (docker's shape, nanoseconds) as a HealthCheck."""
    if not h or not h.get("Test"):
        return None
    ns = 1e-9
    return HealthCheck(test=list(h["Test"]), interval=h.get("Interval", 0) * ns, timeout=h.get("Timeout", 0) * ns,
                       retries=int(h.get("Retries", 0)), start_period=h.get("StartPeriod", 0) * ns,
                       start_interval=h.get("StartInterval", 0) * ns)


def effective(own: HealthCheck | None, image: HealthCheck | None) -> HealthCheck | None:
    """The container's check: its own over the image's, field by field (docker merges them);
    None when there is none or it is NONE."""
    if own is None:
        h = image
    elif image is None or own.test:
        h = own if own.test else None
        if h is not None and image is not None:
            h = HealthCheck(test=own.test, interval=own.interval or image.interval,
                            timeout=own.timeout or image.timeout, retries=own.retries or image.retries,
                            start_period=own.start_period or image.start_period,
                            start_interval=own.start_interval or image.start_interval)
    else:  # only durations given (--health-interval without --health-cmd): the image's test
        h = HealthCheck(test=image.test, interval=own.interval or image.interval,
                        timeout=own.timeout or image.timeout, retries=own.retries or image.retries,
                        start_period=own.start_period or image.start_period,
                        start_interval=own.start_interval or image.start_interval)
    if h is None or not h.test or h.test[0] == "NONE":
        return None
    return h


def check(h: HealthCheck | None) -> None:
    if h is None:
        return
    if h.test and h.test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise InvalidArgument(f"health check test {h.test!r}: must start with CMD, CMD-SHELL or NONE")
    if h.test and h.test[0] in ("CMD", "CMD-SHELL") and not [a for a in h.test[1:] if a.strip()]:
        raise InvalidArgument("health check: --health-cmd has no command")
    for name in ("interval", "timeout", "start_period", "start_interval"):
        v = getattr(h, name)
        if v < 0 or (name in ("interval", "timeout", "start_interval") and 0 < v < 0.001):
            raise InvalidArgument(f"--health-{name.replace('_', '-')}: {v}s is out of range (0, or at least 1ms)")
    if h.retries < 0:
        raise InvalidArgument(f"--health-retries: {h.retries} is negative")


def command(h: HealthCheck) -> list[str]:
    return ["/bin/sh", "-c", h.test[1]] if h.test[0] == "CMD-SHELL" else list(h.test[1:])


class HealthMonitor:
    """One task per running container with a check; `changed` is called on every state change."""

    def __init__(self, run: Callable[[Container, list[str], float], Any], changed: Callable[[Container], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run = run          # async (container, argv, timeout) -> (exit code, output)
        self.changed = changed
        self.clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, c: Container, h: HealthCheck | None) -> None:
        self.stop(c.id)
        if h is None:
            if c.state.health:
                c.state.health, c.state.health_failing = "", 0
            return
        c.state.health, c.state.health_failing = "starting", 0
        self._tasks[c.id] = asyncio.get_running_loop().create_task(self._loop(c, h))

    def stop(self, cid: str) -> None:
        t = self._tasks.pop(cid, None)
        if t is not None:
            t.cancel()

    def shutdown(self) -> None:
        for cid in list(self._tasks):
            self.stop(cid)

    async def _loop(self, c: Container, h: HealthCheck) -> None:
        interval = h.interval or DEFAULT_INTERVAL
        timeout = h.timeout or DEFAULT_TIMEOUT
        retries = h.retries or DEFAULT_RETRIES
        start_interval = h.start_interval or DEFAULT_START_INTERVAL
        started = self.clock()
        argv = command(h)
        while c.state.status in ("running", "paused"):
            in_start = self.clock() - started < h.start_period
            await asyncio.sleep(min(start_interval, interval) if in_start and h.start_period else interval)
            if c.state.status != "running":
                if c.state.status == "paused":
                    continue
                return
            t0 = time.time()
            try:
                code, output = await asyncio.wait_for(self.run(c, argv, timeout), timeout + 5)
            except TimeoutError:
                code, output = -1, f"Health check exceeded timeout ({timeout:g}s)".encode()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the exec could not run (the container is going away...)
                code, output = -1, str(e).encode()
            self._record(c, h, t0, code, output, retries, self.clock() - started < h.start_period)

    def _record(self, c: Container, h: HealthCheck, t0: float, code: int, output: bytes, retries: int,
                in_start: bool) -> None:
        c.state.health_log = [*c.state.health_log, {"Start": t0, "End": time.time(), "ExitCode": code,
                                                    "Output": output[-OUTPUT_MAX:].decode(errors="replace")}][-LOG_KEEP:]
        before = c.state.health
        if code == 0:
            c.state.health, c.state.health_failing = "healthy", 0
        elif not (in_start and before == "starting"):
            c.state.health_failing += 1
            if c.state.health_failing >= retries:
                c.state.health = "unhealthy"
        if c.state.health != before:
            log.info("%s: %s -> %s", c.name, before, c.state.health)
            with contextlib.suppress(Exception):
                self.changed(c)


async def exec_in(stub: Any, cid: str, argv: list[str], timeout: float) -> tuple[int, bytes]:
    """Run argv in the container through the agent's own Exec; (exit code, output)."""
    from protos import agent_pb2 as apb

    async def inputs() -> AsyncIterator[apb.StreamInput]:
        yield apb.StreamInput(open=apb.OpenStream(container=cid, exec=apb.ExecSpec(cmd=argv)))

    import grpc

    code, out = -1, b""
    try:
        async for msg in stub.Exec(inputs(), timeout=timeout):
            if msg.HasField("exit"):
                code = msg.exit.exit_code
            elif msg.HasField("stdout") or msg.HasField("stderr"):
                out = (out + (msg.stdout or msg.stderr))[-OUTPUT_MAX:]
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise TimeoutError from None
        return -1, (e.details() or "").encode()
    return code, out
