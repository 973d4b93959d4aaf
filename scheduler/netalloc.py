"""The leader's address allocator: writes what scheduler/network.plan_addresses decides.

Each decision is its own guarded transaction: an Assign creates the address key only if it does
not exist (two leaders for a moment, or a stale view, cannot hand one address out twice), a
Transfer and a Release compare the key's mod_revision, a task sent back to pending compares the
task's. A lost guard is left to the next pass, which decides again from the view.
"""

from __future__ import annotations

import asyncio
import logging

from scheduler import network as netmod
from scheduler.store import Conflict, Delete, Op, Put, Store
from scheduler.view import View

log = logging.getLogger("dockyard.scheduler.netalloc")


def plan(view: View, now: float) -> list[netmod.AddressOp]:
    if not view.networks and not view.allocations and not view.quarantine:
        return []
    return netmod.plan_addresses(view.networks, view.allocations.values(), view.quarantine.values(), view.tasks,
                                 view.services, now, nodes=view.nodes)


def ops_of(store: Store, op: netmod.AddressOp, now: float) -> list[Op]:
    k = store.keys
    if isinstance(op, netmod.Assign):
        a = op.allocation
        return [Put(k.ipam(a.network, a.ip), a.encode(), 0)]
    if isinstance(op, netmod.Transfer):
        a = op.allocation
        return [Put(k.ipam(a.network, a.ip), a.encode(), a.mod_revision)]
    if isinstance(op, netmod.Release):
        a = op.allocation
        return [Delete(k.ipam(a.network, a.ip), a.mod_revision),
                Put(k.quarantine(a.network, a.ip), netmod.Quarantined(a.network, a.ip, op.freed_at).encode(), None)]
    if isinstance(op, netmod.Expire):
        q = op.entry
        return [Delete(k.quarantine(q.network, q.ip), q.mod_revision)]
    task = netmod.pending_again(op, now)
    return [] if task is None else [store.put_task_op(task)]


async def write(store: Store, ops: list[netmod.AddressOp], now: float) -> int:
    """Write every decision (concurrently, each alone); the highest revision written."""
    sem = asyncio.Semaphore(8)
    revision = 0

    async def one(op: netmod.AddressOp) -> None:
        nonlocal revision
        txn = ops_of(store, op, now)
        if not txn:
            return
        async with sem:
            try:
                rev = await store.commit(txn)
            except Conflict as e:
                log.debug("address decision %s lost: %s", type(op).__name__, e)
                return
        revision = max(revision, rev)
        if isinstance(op, netmod.Assign | netmod.Transfer):
            a = op.allocation
            log.info("%s %s -> %s (%s.%d)", a.network, a.ip, a.task_id, a.service, a.slot)
        elif isinstance(op, netmod.Release):
            log.info("%s %s freed (task %s removed); quarantined", op.allocation.network, op.allocation.ip,
                     op.allocation.task_id)

    await asyncio.gather(*(one(op) for op in ops))
    return revision
