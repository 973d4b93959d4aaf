"""Each container's run after its start: the agent watches its shim for the exit, records it, tears
the run down (cgroup, rootfs, veth and port rules), applies the restart policy (agent/restart.py
decides, this module waits and starts again), and, after an agent restart, adopts the containers it
finds on disk: live shims are watched again, the rest are settled.

The container manager owns one Supervisor and starts containers; the Supervisor never creates one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from typing import TYPE_CHECKING, Any

from agent import restart
from agent.model import AgentError, Container
from agent.runtime import frames
from agent.runtime.procs import pid_start_time, process_alive, trace
from agent.runtime.rootfs import unmount

if TYPE_CHECKING:
    from agent.containers import ContainerManager

log = logging.getLogger("dockyard.agent")


class Supervisor:
    def __init__(self, manager: ContainerManager) -> None:
        self.m = manager
        self.monitors: dict[str, asyncio.Task[None]] = {}     # by container id: watching its shim
        self.teardowns: dict[str, asyncio.Task[None]] = {}    # by container id: its last run's undo

    async def torn_down(self, c: Container) -> None:
        """The exit is reported before the teardown (so that `wait` is quick); a new run of the
        same container, or its removal, waits for that teardown, which would otherwise remove the
        new run's cgroup and port rules (they are named after the container)."""
        t = self.teardowns.get(c.id)
        if t is not None:
            with contextlib.suppress(Exception):
                await t

    def watch(self, c: Container) -> None:
        old = self.monitors.get(c.id)
        if old is not None and not old.done():
            return
        self.monitors[c.id] = asyncio.get_running_loop().create_task(self._monitor(c))

    async def _monitor(self, c: Container) -> None:
        files = self.m.files(c)
        try:
            reader, writer = await asyncio.open_unix_connection(str(files.socket))
        except OSError:
            reader = None
        if reader is not None:
            dec = frames.Decoder()
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    if any(kind == frames.EXIT for kind, _ in dec.feed(data)):
                        break
            except (OSError, ValueError):
                pass
            writer.close()
        # The shim writes exit.json before it says EXIT or closes; wait for it briefly if it died.
        for _ in range(50):
            if files.exit.exists() or not self.shim_alive(c):
                break
            await asyncio.sleep(0.1)
        await self.on_exit(c)

    def shim_alive(self, c: Container) -> bool:
        info = self.init_info(c)
        if not info:
            return False
        try:
            return process_alive(int(info["shim_pid"]), int(info["shim_start_time"]))
        except (ValueError, KeyError):
            return False

    def init_info(self, c: Container) -> dict[str, Any]:
        try:
            return dict(json.loads(self.m.files(c).init_pid.read_text()))
        except (OSError, ValueError):
            return {}

    async def on_exit(self, c: Container) -> None:
        files = self.m.files(c)
        try:
            result = json.loads(files.exit.read_text())
        except (OSError, ValueError):
            result = {"exit_code": 255, "finished_at": time.time(),
                      "error": "the container's shim died without recording an exit status"}
        if "oom_killed" not in result:  # (a restored container's monitor does not know its cgroup)
            try:
                # One small read of a kernel file: not worth a thread hop on the way to `wait`.
                result["oom_killed"] = self.m.cg.oom_kills(c.id) > 0
            except Exception:
                result["oom_killed"] = False
        trace("agent: exit seen")
        self.teardowns[c.id] = asyncio.get_running_loop().create_task(self._teardown(c, c.endpoint))
        c.state.status = "exited"
        c.state.pid = 0
        c.state.exit_code = int(result["exit_code"])
        c.state.oom_killed = bool(result.get("oom_killed"))
        c.state.finished_at = float(result.get("finished_at") or time.time())
        if result.get("error"):
            c.state.error = str(result["error"])
        self.monitors.pop(c.id, None)
        if self.m.checkpoints.dumping(c):
            # CRIU ended the process: not a failure, and the address stays for the restore.
            c.state.exit_code = 0
            self.m._save(c)
            self.m._event(c).set()
            return
        self.m._release_network(c)
        # A --rm container's record is about to go: not worth a file write (about a millisecond
        # here) on the way to its removal. An agent killed meanwhile finds exit.json at adoption.
        self.m._save(c, write=not c.config.auto_remove)
        self.m._event(c).set()
        if c.config.auto_remove:
            try:
                with contextlib.suppress(AgentError):
                    await self.m.remove(c.id, force=True, volumes=True)
            finally:
                self.m._removed(c)
            return
        if restart.should_restart(c.state, c.config.restart_policy, pulling=self.m.checkpoints.pulling(c)):
            c.state.status = "restarting"
            self.m._save(c)
            self.m._spawn(self.restart_later(c))

    async def restart_later(self, c: Container) -> None:
        await asyncio.sleep(restart.backoff(c.state.restart_count))
        if c.id not in self.m.containers or c.state.status != "restarting" or c.state.stopped_by_user:
            return
        c.state.restart_count += 1
        async with self.m._lock(c):
            try:
                await self.m._start_locked(c, hold=False)
            except AgentError as e:
                log.warning("restart of %s failed: %s", c.name, e)
                c.state.status = "exited"
                self.m._save(c)

    async def _teardown(self, c: Container, endpoint: dict[str, Any] | None) -> None:
        """Undo a run once its init has exited (or its shim was killed, and the init with it): the
        cgroup (killing what is left in it), the rootfs mount, the veth and port rules.

        The monitor has started on the first two (monitor.c): wait for it to finish first, so that
        it cannot unmount or remove what a new run of this container makes. It has usually done
        them: what is left to check is a few syscalls, done here; a thread does the rest, if any
        (a thread hop costs a millisecond or more while the loop is busy, for a GIL handoff)."""
        info = self.init_info(c)
        with contextlib.suppress(KeyError, ValueError):
            await exited(int(info["shim_pid"]), int(info["shim_start_time"]), 5)
        trace("agent: teardown")
        pid = int(info.get("pid", 0))
        if pid:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if pid_start_time(pid) == int(info["start_time"]):
                    os.kill(pid, signal.SIGKILL)
        rootfs = str(self.m.files(c).dir / "rootfs")
        if self.m.cg.exists(c.id) or os.path.ismount(rootfs) or endpoint:
            await asyncio.to_thread(self._teardown_rest, c, rootfs, endpoint)
        if c.config.mounts and c.state.status not in ("running", "paused") and self.m.mounts.has_device_volume(c):
            await asyncio.to_thread(self.m.mounts.release, c)
        trace("agent: teardown done")

    def _teardown_rest(self, c: Container, rootfs: str, endpoint: dict[str, Any] | None) -> None:
        with contextlib.suppress(Exception):
            self.m.cg.destroy(c.id)
        unmount(rootfs)
        if endpoint:  # as it was at the exit: the caller may release it meanwhile
            self.m._detach_network(endpoint)

    async def adopt(self) -> None:
        """After a restart: load every container; reconnect to live shims; settle the rest."""
        self.m._spawn(asyncio.to_thread(self.m._purge, list(self.m.trash.iterdir())))
        for d in sorted(self.m.dir.iterdir()):
            cfg = d / "config.json"
            if not cfg.exists():
                shutil.rmtree(d, ignore_errors=True)  # a create that never finished
                continue
            try:
                c = Container.load(cfg)
            except (OSError, ValueError, TypeError) as e:
                log.error("cannot read %s: %s", cfg, e)
                continue
            self.m.containers[c.id] = c
            if (d / "lazy-dump.json").exists():
                self.m._spawn(self.m.checkpoints.end_stale_lazy_dump(c))
            if c.state.status in ("running", "paused", "restarting"):
                if self.shim_alive(c):
                    with contextlib.suppress(Exception):
                        c.state.status = "paused" if self.m.cg.frozen(c.id) else "running"
                    self.watch(c)
                elif c.state.status == "restarting":
                    self.m._spawn(self.restart_later(c))
                else:
                    await self.on_exit(c)
        # a tmpfs of secrets whose container is gone (removed while the agent was down, or a create
        # that never finished): unmounted now, so no secret stays in memory for nothing
        await asyncio.to_thread(self.m.taskfiles.prune, set(self.m.containers))


async def exited(pid: int, start_time: int, timeout: float) -> None:
    """Until this very process (pid and start time) has exited, or `timeout` seconds: a pidfd
    becomes readable at the exit, which the loop watches with no thread."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone (ESRCH)
        return
    try:
        if not process_alive(pid, start_time):  # checked after the open: the pidfd is this process's
            return
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(fd, readable)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone, timeout)
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
