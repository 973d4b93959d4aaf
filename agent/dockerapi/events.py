"""Docker's event stream, made from the container manager's changes (and what the image handlers
report): GET /events, and the waits that need "the next exit" or "removed"."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent.model import Container

_ACTIONS = {"running": "start", "exited": "die", "dead": "die", "paused": "pause"}
KEEP = 1024   # events remembered for ?since=


class Events:
    def __init__(self, manager: Any) -> None:
        self._last: dict[str, tuple[str, str]] = {}   # id -> (status, name) as last seen
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self._waiters: list[tuple[str, set[str], asyncio.Future[dict[str, Any]]]] = []
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        for c in manager.containers.values():
            self._last[c.id] = (c.state.status, c.name)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        manager.on_change.append(self._changed)
        manager.on_remove.append(self._removed)

    def _changed(self, c: Container) -> None:
        # The manager saves from worker threads too (a create runs in one): hand it to the loop.
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._seen, c, c.state.status, c.name)
        else:
            self._seen(c, c.state.status, c.name)

    def _seen(self, c: Container, now: str, now_name: str) -> None:
        before = self._last.get(c.id)
        self._last[c.id] = (now, now_name)
        if before is None:
            self.container(c, "create")
            if now == "running":
                self.container(c, "start")
            return
        status, name = before
        if name != now_name:
            self.container(c, "rename", oldName="/" + name)
        if status == now:
            return
        if status == "paused" and now == "running":
            self.container(c, "unpause")
        elif now in _ACTIONS:
            extra = {"exitCode": str(c.state.exit_code)} if _ACTIONS[now] == "die" else {}
            if now == "exited" and c.state.oom_killed:
                self.container(c, "oom")
            self.container(c, _ACTIONS[now], **extra)

    def _removed(self, c: Container) -> None:
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._removed, c)
            return
        self._last.pop(c.id, None)
        self.container(c, "destroy")

    def container(self, c: Container, action: str, **attrs: str) -> None:
        self.emit("container", action, c.id, {"image": c.image_ref, "name": c.name, **c.config.labels, **attrs})

    def emit(self, type_: str, action: str, actor: str, attrs: dict[str, str]) -> None:
        now = time.time_ns()
        ev: dict[str, Any] = {"Type": type_, "Action": action, "Actor": {"ID": actor, "Attributes": attrs},
                              "scope": "local", "time": now // 1_000_000_000, "timeNano": now}
        if type_ == "container":  # the pre-1.22 keys, which docker still sends and docker-py reads
            ev.update({"status": action, "id": actor, "from": attrs.get("image", "")})
        self.recent.append(ev)
        if self._waiters:
            keep = []
            for cid, actions, fut in self._waiters:
                if fut.done():
                    continue
                if type_ == "container" and cid == actor and action in actions:
                    fut.set_result(ev)
                else:
                    keep.append((cid, actions, fut))
            self._waiters = keep
        for q in list(self._subs):
            q.put_nowait(ev)

    async def subscribe(self, since: float | None, until: float | None,
                        match: Callable[[dict[str, Any]], bool]) -> AsyncIterator[dict[str, Any]]:
        """Past events from `since`, then live ones until `until` (or forever)."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subs.add(q)
        try:
            if since is not None:
                for ev in list(self.recent):
                    if ev["timeNano"] >= since * 1e9 and (until is None or ev["timeNano"] <= until * 1e9) \
                            and match(ev):
                        yield ev
            while True:
                timeout = None if until is None else until - time.time()
                if timeout is not None and timeout <= 0:
                    return
                try:
                    ev = await asyncio.wait_for(q.get(), timeout)
                except TimeoutError:
                    return
                if since is not None and ev["timeNano"] < since * 1e9:
                    continue
                if match(ev):
                    yield ev
        finally:
            self._subs.discard(q)

    def future_of(self, container_id: str, actions: set[str]) -> asyncio.Future[dict[str, Any]]:
        """Resolved with the next event of this container that has one of `actions` (registered
        now: no event between the caller's look at the state and its await is missed)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((container_id, actions, fut))
        return fut
