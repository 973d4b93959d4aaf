"""Leader election on /dockyard/leader: the key is created (only if absent) bound to this replica's
lease, and kept while the lease is refreshed every ttl/3. Only the leader reconciles and
dispatches. A leader that cannot refresh its lease steps down at once, before the lease can have
expired, so two replicas never act as leader together; a killed leader's key vanishes with its
lease within `ttl`, and a follower (polling every `poll` seconds) takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from scheduler.store import Conflict, Put, Store, StoreError

log = logging.getLogger("dockyard.scheduler.leader")


class Election:
    def __init__(self, store: Store, replica: str, address: str, *, ttl: int = 3, poll: float = 0.3) -> None:
        self.store = store
        self.replica = replica
        self.address = address
        self.ttl = ttl
        self.poll = poll
        self.is_leader = False
        self.leader_replica = ""
        self.leader_address = ""
        self.on_change: list[Callable[[bool], None]] = []
        self._lease = 0

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("replica %s is %s", self.replica, "the leader" if leader else "a follower")
            for cb in self.on_change:
                cb(leader)

    async def run(self) -> None:
        key = self.store.keys.leader()
        value = json.dumps({"replica": self.replica, "address": self.address}).encode()
        try:
            while True:
                try:
                    await self._campaign(key, value)
                except asyncio.CancelledError:
                    raise
                except StoreError as e:
                    log.debug("election: %s", e)
                except Exception as e:
                    log.exception("election: %s", e)
                self._set(False)
                await asyncio.sleep(self.poll)
        finally:
            self._set(False)

    async def _campaign(self, key: bytes, value: bytes) -> None:
        got = await self.store.get_raw(key)
        if got is not None:
            self._read_leader(got[0])
            return
        lease = await self.store.grant_lease(self.ttl)
        granted = time.monotonic()
        try:
            await self.store.commit([Put(key, value, 0, lease=lease)])
        except Conflict:
            with contextlib.suppress(StoreError):
                await self.store.revoke_lease(lease)
            return
        self._lease = lease
        self.leader_replica, self.leader_address = self.replica, self.address
        self._set(True)
        refreshed = granted
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                ok = await asyncio.wait_for(self.store.keep_alive(lease), self.ttl / 3)
            except (StoreError, TimeoutError) as e:
                log.warning("leader lease not refreshed: %s; stepping down", e)
                ok = False
            if not ok or time.monotonic() - refreshed > self.ttl * 2 / 3:
                self._lease = 0
                return
            refreshed = time.monotonic()

    def _read_leader(self, raw: bytes) -> None:
        try:
            d = json.loads(raw)
            self.leader_replica, self.leader_address = str(d.get("replica", "")), str(d.get("address", ""))
        except ValueError:
            self.leader_replica = self.leader_address = ""

    async def resign(self) -> None:
        """Give the lead up now (a clean stop), so another replica takes over without waiting."""
        lease, self._lease = self._lease, 0
        self._set(False)
        if lease:
            with contextlib.suppress(StoreError, Exception):
                await asyncio.wait_for(self.store.revoke_lease(lease), 2)
