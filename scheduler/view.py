"""Every replica's in-memory view of /dockyard/: one snapshot, then a watch from its revision.

Reads (node ls, service ps, ...) are answered from here, so they keep working while etcd is away;
the leader reconciles from it. When etcd goes away the view keeps its last state, marks itself
stale and retries; when etcd returns it takes a fresh snapshot (nothing is lost: etcd has it all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from scheduler.model import Migration, Node, NodeStatus, Service, Task
from scheduler.network import Allocation, Network, Quarantined
from scheduler.store import Store, StoreError, WatchEvent

log = logging.getLogger("dockyard.scheduler.view")


class View:
    def __init__(self, store: Store, *, retry: float = 0.5) -> None:
        self.store = store
        self.retry = retry
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, Service] = {}
        self.tasks: dict[str, Task] = {}
        self.alive: set[str] = set()
        self.migrations: dict[str, Migration] = {}  # /dockyard/migrations/: tasks being moved
        self.networks: dict[str, Network] = {}  # /dockyard/net/: cluster networks and addresses
        self.allocations: dict[tuple[str, str], Allocation] = {}
        self.quarantine: dict[tuple[str, str], Quarantined] = {}
        self.net_listeners: list[Callable[[], None]] = []  # called on every change that moves an endpoint
        self.revision = 0
        self.etcd_ok = False
        self.loaded = asyncio.Event()
        self.changed = asyncio.Event()  # set on every change; the leader loop clears it
        self.listeners: list[Callable[[set[str]], None]] = []  # called with the nodes a change touched
        self._rev_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.error = ""

    # --- reads ---------------------------------------------------------------------------------

    def node_list(self) -> list[Node]:
        return list(self.nodes.values())

    def tasks_of(self, service: str) -> list[Task]:
        return [t for t in self.tasks.values() if t.service == service]

    def tasks_on(self, node: str) -> list[Task]:
        return [t for t in self.tasks.values() if t.node == node]

    def migrating(self) -> set[str]:
        """Ids of the tasks being moved: nobody but the migration touches them."""
        return {m.task_id for m in self.migrations.values()}

    async def wait_revision(self, revision: int, timeout: float = 5.0) -> bool:
        """Wait until the view has seen `revision` (a write of ours); False on timeout."""
        if self.revision >= revision:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rev_waiters.append((revision, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    # --- feeding -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                snap = await self.store.snapshot()
                self.migrations = snap.migrations
                self.networks, self.allocations, self.quarantine = snap.networks, snap.allocations, snap.quarantine
                self._load(snap.revision, snap.nodes, snap.services, snap.tasks, snap.alive)
                async for ev in self.store.watch(self.store.keys.root, start_revision=snap.revision + 1):
                    self._event(ev)
                raise StoreError("watch ended")
            except asyncio.CancelledError:
                raise
            except StoreError as e:
                if self.etcd_ok:
                    log.warning("etcd lost (%s): answering from memory, retrying", e)
                self.etcd_ok = False
                self.error = str(e)
            except Exception as e:  # a bug must not stop the replica from answering
                log.exception("view: %s", e)
                self.etcd_ok = False
                self.error = str(e)
            await asyncio.sleep(self.retry)

    def _load(self, revision: int, nodes: dict[str, Node], services: dict[str, Service], tasks: dict[str, Task],
              alive: set[str]) -> None:
        touched = set(self.nodes) | set(nodes)
        self.nodes, self.services, self.tasks, self.alive = nodes, services, tasks, alive
        self.etcd_ok = True
        self.error = ""
        if not self.loaded.is_set():
            log.info("view loaded at revision %d: %d nodes, %d services, %d tasks",
                     revision, len(nodes), len(services), len(tasks))
        self.loaded.set()
        self._advance(revision, touched)
        for cb in self.net_listeners:
            cb()

    def _advance(self, revision: int, touched: set[str]) -> None:
        self.revision = max(self.revision, revision)
        self.changed.set()
        for cb in self.listeners:
            cb(touched)
        keep = []
        for rev, fut in self._rev_waiters:
            if rev <= self.revision:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((rev, fut))
        self._rev_waiters = keep

    def _event(self, ev: WatchEvent) -> None:
        k = self.store.keys
        touched: set[str] = set()
        rec = self.store.decode_event(ev)
        if ev.key.startswith(k.alive()):
            name = k.name_of(ev.key, k.alive())
            if ev.kind == "put":
                self.alive.add(name)
            else:
                self.alive.discard(name)
            node = self.nodes.get(name)
            if node is not None:
                node.status = NodeStatus.READY if name in self.alive else NodeStatus.DOWN
            touched.add(name)
        elif ev.key.startswith(k.tasks()):
            tid = ev.key.rsplit(b"/", 1)[-1].decode()
            old = self.tasks.pop(tid, None)
            if old is not None and old.node:
                touched.add(old.node)
            if isinstance(rec, Task):
                self.tasks[tid] = rec
                if rec.node:
                    touched.add(rec.node)
        elif ev.key.startswith(k.nodes()):
            name = k.name_of(ev.key, k.nodes())
            self.nodes.pop(name, None)
            if isinstance(rec, Node):
                rec.status = NodeStatus.READY if name in self.alive else NodeStatus.DOWN
                self.nodes[name] = rec
            touched.add(name)
        elif ev.key.startswith(k.migration()):
            mid = k.name_of(ev.key, k.migration())
            old_m = self.migrations.pop(mid, None)
            if ev.kind == "put":
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    self.migrations[mid] = Migration.decode(ev.value, ev.mod_revision)
            for m in (old_m, self.migrations.get(mid)):
                if m is not None:
                    touched |= {m.source, m.target}
        elif ev.key.startswith(k.service()):
            name = k.name_of(ev.key, k.service())
            self.services.pop(name, None)
            if isinstance(rec, Service):
                self.services[name] = rec
        elif ev.key.startswith(k.net()):
            self.store.net_record(ev.key, ev.value if ev.kind == "put" else None, ev.mod_revision, self)
        self._advance(ev.mod_revision, touched)
        if self.net_listeners and (ev.key.startswith(k.net()) or ev.key.startswith(k.tasks())
                                   or ev.key.startswith(k.nodes()) or ev.key.startswith(k.migration())
                                   or ev.key.startswith(k.service())):
            for cb in self.net_listeners:
                cb()


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
