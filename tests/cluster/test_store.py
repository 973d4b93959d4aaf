"""The etcd store and the executor on a real etcd (Debian's etcd-server on loopback)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import codec
from scheduler.executor import Executor
from scheduler.model import (
    NANO,
    Capabilities,
    DesiredState,
    Node,
    NodeStatus,
    Resources,
    ServiceSpec,
    Task,
    TaskState,
)
from scheduler.reconcile import Migrate, Plan, Stop, apply, new_service, reconcile
from scheduler.store import Conflict, Delete, Put, Store, Unavailable
from tests.etcd_server import EtcdServer, etcd, etcd_server, free_port

__all__ = ["etcd", "etcd_server"]  # fixtures, used by name

pytestmark = pytest.mark.etcd
T = TypeVar("T")


def run(server: EtcdServer, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await Store.connect(server.host, server.port)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def task(i: int, service: str = "web", **kw: Any) -> Task:
    return Task(service=service, slot=i, id=f"t{i}", spec_version="v1", **kw)


def test_create_then_guarded_update_conflicts(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        await s.commit([s.put_task_op(task(1))])
        with pytest.raises(Conflict) as e:  # creating it again: the key exists
            await s.commit([s.put_task_op(task(1))])
        assert e.value.keys == (s.keys.task("web", "t1"),)
        t = await s.get_task("web", "t1")
        assert t is not None and t.mod_revision > 0
        await s.commit([s.put_task_op(t.with_(state=TaskState.RUNNING))])  # guarded on what we read
        with pytest.raises(Conflict):  # the same stale read again loses
            await s.commit([s.put_task_op(t.with_(state=TaskState.FAILED))])
        now = await s.get_task("web", "t1")
        assert now is not None and now.state is TaskState.RUNNING

    run(etcd, body)


def test_a_lost_guard_writes_nothing_of_the_transaction(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        await s.commit([s.put_task_op(task(1))])
        stale = task(1)  # mod_revision 0: "must not exist", which no longer holds
        with pytest.raises(Conflict) as e:
            await s.commit([s.put_task_op(task(2)), s.put_task_op(task(3)), s.put_task_op(stale)])
        assert e.value.keys == (s.keys.task("web", "t1"),)  # names exactly the key that moved
        assert [t.id for t in await s.list_tasks()] == ["t1"]

    run(etcd, body)


def test_concurrent_writers_exactly_one_wins(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        await s.commit([s.put_task_op(task(1))])
        t = await s.get_task("web", "t1")
        assert t is not None
        results = await asyncio.gather(*(s.commit([s.put_task_op(t.with_(container_id=f"c{i}"))])
                                         for i in range(10)), return_exceptions=True)
        assert sum(isinstance(r, int) for r in results) == 1
        assert sum(isinstance(r, Conflict) for r in results) == 9

    run(etcd, body)


def test_batches_of_at_most_128_ops(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        with pytest.raises(ValueError, match="128"):
            await s.commit([s.put_task_op(task(i)) for i in range(129)])
        res = await s.commit_batches([s.put_task_op(task(i)) for i in range(1000)], concurrency=4)
        assert res.written == 1000 and res.transactions == 8 and not res.conflicts
        assert len(await s.list_tasks("web")) == 1000
        # one stale op loses its batch only; the other batches land
        again = [s.put_task_op(task(i, "api")) for i in range(300)] + [s.put_task_op(task(5))]
        res = await s.commit_batches(again)
        assert len(res.conflicts) == 1 and res.written == 256
        assert res.conflicts[0][1].keys == (s.keys.task("web", "t5"),)

    run(etcd, body)


def test_delete_is_guarded_too(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        await s.commit([s.put_task_op(task(1))])
        t = await s.get_task("web", "t1")
        assert t is not None
        with pytest.raises(Conflict):
            await s.commit([Delete(s.keys.task("web", "t1"), t.mod_revision + 100)])
        await s.commit([s.delete_task_op(t)])
        assert await s.get_task("web", "t1") is None

    run(etcd, body)


def test_records_round_trip(etcd: EtcdServer) -> None:
    node = Node("n1", address="127.0.0.1:7000", labels={"zone": "a"}, capacity=Resources(2 * NANO, 1 << 30),
                capabilities=Capabilities(criu=True, cgroup_version=1), images=frozenset({"nginx"}))
    spec = ServiceSpec(name="web", image="nginx:1", env=(("A", "1"),), replicas=3)

    async def body(s: Store) -> None:
        await s.commit([s.put_node_op(node), s.put_service_op(new_service(spec, 10.0))])
        got = await s.get_node("n1")
        assert got is not None and got.labels == {"zone": "a"} and got.capabilities.criu
        assert got.capacity == node.capacity and got.images == frozenset({"nginx"})
        svc = await s.get_service("web")
        assert svc is not None and svc.spec == spec and svc.spec.digest == spec.digest
        snap = await s.snapshot()
        assert snap.nodes["n1"].status is NodeStatus.DOWN  # no alive key: no heartbeat yet
        assert snap.services["web"].spec == spec

    run(etcd, body)


@pytest.mark.slow
def test_lease_expiry_marks_node_down(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        await s.commit([s.put_node_op(Node("n1")), s.put_node_op(Node("n2"))])
        short = await s.grant_lease(1)
        kept = await s.grant_lease(1)
        await s.mark_alive("n1", short)
        await s.mark_alive("n2", kept)
        assert await s.alive_nodes() == {"n1", "n2"}
        deadline = time.monotonic() + 8
        while "n1" in await s.alive_nodes():  # etcd expires leases on its own clock: ~1-2 s
            assert await s.keep_alive(kept)
            assert time.monotonic() < deadline, "lease of n1 never expired"
            await asyncio.sleep(0.2)
        assert await s.alive_nodes() == {"n2"}
        assert not await s.keep_alive(short)  # expired: the agent must register again
        snap = await s.snapshot()
        assert snap.nodes["n1"].status is NodeStatus.DOWN and snap.nodes["n2"].status is NodeStatus.READY
        await s.revoke_lease(kept)
        assert await s.alive_nodes() == set()

    run(etcd, body)


def test_watch_delivers_puts_and_deletes_in_order(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        seen: list[tuple[str, bytes]] = []
        ready = asyncio.Event()

        async def watcher() -> None:
            gen = s.watch(s.keys.tasks())
            ready.set()
            async for ev in gen:
                seen.append((ev.kind, ev.key))
                rec = s.decode_event(ev)
                if ev.kind == "put":
                    assert isinstance(rec, Task)
                if len(seen) == 3:
                    break

        w = asyncio.create_task(watcher())
        await ready.wait()
        await asyncio.sleep(0.2)  # the watch is registered
        await s.commit([s.put_task_op(task(1))])
        await s.commit([Put(s.keys.node("x"), b"{}", None)])  # outside the prefix: not delivered
        t = await s.get_task("web", "t1")
        assert t is not None
        await s.commit([s.put_task_op(t.with_(state=TaskState.RUNNING))])
        t = await s.get_task("web", "t1")
        assert t is not None
        await s.commit([s.delete_task_op(t)])
        await asyncio.wait_for(w, 5)
        key = s.keys.task("web", "t1")
        assert seen == [("put", key), ("put", key), ("delete", key)]

    run(etcd, body)


def test_watch_from_a_past_revision_replays(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        rev = await s.commit([s.put_task_op(task(1))])
        await s.commit([s.put_task_op(task(2))])
        got = []
        async for ev in s.watch(s.keys.tasks(), start_revision=rev):
            got.append(ev.key)
            if len(got) == 2:
                break
        assert got == [s.keys.task("web", "t1"), s.keys.task("web", "t2")]

    run(etcd, body)


def test_unreachable_etcd_is_a_clear_error() -> None:
    port = free_port()

    async def main() -> None:
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
            await Store.connect("127.0.0.1", port, timeout=1.0)

    asyncio.run(main())


def _cluster() -> tuple[dict[str, Any], list[Node]]:
    spec = ServiceSpec(name="web", image="nginx", replicas=6)
    nodes = [Node(f"n{i}", capacity=Resources(4 * NANO, 8 << 30)) for i in range(3)]
    return {"web": new_service(spec, 0.0)}, nodes


def test_executor_applies_a_plan_and_store_matches_pure_apply(etcd: EtcdServer) -> None:
    services, nodes = _cluster()
    ids = itertools.count()

    async def body(s: Store) -> None:
        await s.commit([s.put_service_op(services["web"])] + [s.put_node_op(n) for n in nodes])
        svc = (await s.snapshot()).services
        plan = reconcile(svc, [], nodes, 1.0, new_id=lambda: f"id{next(ids)}", rng=random.Random(0))
        res = await Executor(s).apply(plan)
        assert res.applied == len(plan.actions) and not res.dropped
        _, want = apply(plan, svc, [])
        got = {t.id: t for t in await s.list_tasks()}
        assert set(got) == set(want)
        for tid, t in got.items():
            assert t.with_(mod_revision=0) == want[tid]
        snap = await s.snapshot()
        assert snap.services["web"].mod_revision == svc["web"].mod_revision  # placing does not touch it

    run(etcd, body)


def test_executor_retries_a_stop_when_the_agent_reported_meanwhile(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        await s.commit([s.put_task_op(task(1, node="n1", state=TaskState.ASSIGNED))])
        read = await s.get_task("web", "t1")
        assert read is not None
        # the agent reports "running" after the scheduler read the task
        await s.commit([s.put_task_op(read.with_(state=TaskState.RUNNING, container_id="c1"))])
        res = await Executor(s).apply(Plan([Stop(read, "scaled down")]))
        assert res.applied == 1 and res.retried == 1 and not res.dropped
        now = await s.get_task("web", "t1")
        assert now is not None
        assert now.desired_state is DesiredState.SHUTDOWN  # the decision landed
        assert now.state is TaskState.RUNNING and now.container_id == "c1"  # the report was kept

    run(etcd, body)


def test_executor_drops_a_decision_whose_basis_moved(etcd: EtcdServer) -> None:
    async def body(s: Store) -> None:
        await s.commit([s.put_task_op(task(1, node="n1", state=TaskState.RUNNING))])
        read = await s.get_task("web", "t1")
        assert read is not None
        await s.commit([s.put_task_op(read.with_(node="n2"))])  # another writer moved it
        res = await Executor(s).apply(Plan([Stop(read, "scaled down")]))
        assert res.applied == 0 and len(res.dropped) == 1 and "changed meanwhile" in res.dropped[0][1]
        now = await s.get_task("web", "t1")
        assert now is not None and now.desired_state is DesiredState.RUNNING

    run(etcd, body)


@pytest.mark.slow
def test_lost_lease_to_tasks_placed_elsewhere_end_to_end(etcd: EtcdServer) -> None:
    """Heartbeats stop on n1 -> its lease expires -> a snapshot shows it down -> reconcile moves its
    tasks -> the executor commits the move, each step on the real etcd."""
    ids = itertools.count()
    spec = ServiceSpec(name="web", image="nginx", replicas=4)

    async def body(s: Store) -> None:
        nodes = [Node("n1", capacity=Resources(4 * NANO, 8 << 30)), Node("n2", capacity=Resources(4 * NANO, 8 << 30))]
        await s.commit([s.put_service_op(new_service(spec, 0.0))] + [s.put_node_op(n) for n in nodes])
        leases = {n.name: await s.grant_lease(1) for n in nodes}
        for name, lease in leases.items():
            await s.mark_alive(name, lease)
        ex = Executor(s)

        async def converge(now: float) -> Plan:
            snap = await s.snapshot()
            plan = reconcile(snap.services, snap.tasks.values(), snap.nodes.values(), now,
                             new_id=lambda: f"id{next(ids)}", rng=random.Random(1))
            res = await ex.apply(plan)
            assert not res.dropped
            return plan

        await converge(1.0)
        for t in await s.list_tasks("web"):  # the agents report their tasks running
            await s.commit([s.put_task_op(t.with_(state=TaskState.RUNNING, started_at=1.0))])
        on_n1 = {t.id for t in await s.list_tasks("web") if t.node == "n1"}
        assert len(on_n1) == 2
        lost = time.monotonic()
        while "n1" in await s.alive_nodes():  # only n2 keeps heartbeating
            await s.keep_alive(leases["n2"])
            await asyncio.sleep(0.1)
        plan = await converge(2.0)
        took = time.monotonic() - lost
        moved = [a for a in plan.actions if isinstance(a, Migrate)]
        assert {a.old.id for a in moved} == on_n1
        tasks = await s.list_tasks("web")
        live = [t for t in tasks if t.desired_state is DesiredState.RUNNING]
        assert len(live) == 4 and {t.node for t in live} == {"n2"}
        assert all(t.desired_state is DesiredState.SHUTDOWN for t in tasks if t.id in on_n1)
        assert took < 5.0, f"lease of 1 s, yet {took:.1f} s from the last heartbeat to the move"

    run(etcd, body)


text = st.text(max_size=20)
tasks_ = st.builds(
    Task, service=text, slot=st.integers(0, 10**6), id=text, spec_version=text, node=st.none() | text,
    desired_state=st.sampled_from(list(DesiredState)), state=st.sampled_from(list(TaskState)),
    state_at=st.floats(0, 1e10), started_at=st.floats(0, 1e10), created_at=st.floats(0, 1e10),
    container_id=text, exit_code=st.none() | st.integers(-(2**31), 2**31), healthy=st.none() | st.booleans(),
    attempt=st.integers(0, 1000), error=text)


@pytest.mark.slow
@given(tasks_)
def test_task_json_is_the_generic_encoding(task: Task) -> None:
    """The hand-written task encoder (the hot path) and decoder agree with the generic ones."""
    raw = codec.task_json(task)
    assert json.loads(raw) == json.loads(json.dumps(codec.encode_task(task)))
    assert codec.decode_task(json.loads(raw)) == task
