"""The scheduler's durable state in etcd (through aetcd): typed keys, JSON values, guarded writes.

Layout (DESIGN.md):
    /dockyard/nodes/<node>          Node (capacity, labels, address, capabilities, availability)
    /dockyard/alive/<node>          empty value bound to the node's lease: present while it heartbeats
    /dockyard/services/<name>       Service (spec, previous spec, update progress)
    /dockyard/tasks/<service>/<id>  Task
    /dockyard/migrations/<id>       migration phase (JSON, owned by the migration module)
    /dockyard/net/...               cluster networks, address allocations, quarantine (scheduler/network.py)
    /dockyard/secrets/<name>        a secret, sealed with the scheduler's key (scheduler/objects.py)
    /dockyard/configs/<name>        a config
    /dockyard/leader                election

Every write is a transaction guarded by the key's mod_revision as the writer last read it
(0: the key must not exist). A failed guard raises Conflict naming the keys that moved; the
caller re-reads and decides again. Nothing here retries a write on its own: only the caller knows
whether its decision still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from scheduler import codec, objects
from scheduler.model import Migration, Node, NodeStatus, Service, Task
from scheduler.network import Allocation, Network, Quarantined

ROOT = b"/dockyard/"
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
_GRPC_OPTIONS = {
    # A snapshot of 100,000 tasks is ~30 MB: above gRPC's 4 MiB default for one message.
    "grpc.max_receive_message_length": 512 << 20,
    "grpc.max_send_message_length": 64 << 20,
}


class StoreError(Exception):
    """Base of the store's errors."""


class Unavailable(StoreError):
    """etcd does not answer (at start: a wrong address; later: it went away)."""


class Conflict(StoreError):
    """A guarded write lost: these keys changed since they were read."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.keys = tuple(keys)
        shown = ", ".join(k.decode(errors="replace") for k in self.keys[:5])
        more = f" and {len(self.keys) - 5} more" if len(self.keys) > 5 else ""
        super().__init__(f"conflict: {shown}{more} changed since read")


class Keys:
    """Typed keys: the only place that knows the layout."""

    def __init__(self, root: bytes = ROOT) -> None:
        self.root = root

    def node(self, name: str) -> bytes:
        return self.root + b"nodes/" + name.encode()

    def nodes(self) -> bytes:
        return self.root + b"nodes/"

    def alive(self, name: str = "") -> bytes:
        return self.root + b"alive/" + name.encode()

    def service(self, name: str = "") -> bytes:
        return self.root + b"services/" + name.encode()

    def task(self, service: str, task_id: str) -> bytes:
        return self.root + b"tasks/" + service.encode() + b"/" + task_id.encode()

    def tasks(self, service: str | None = None) -> bytes:
        return self.root + b"tasks/" + (service.encode() + b"/" if service is not None else b"")

    def migration(self, mig_id: str = "") -> bytes:
        return self.root + b"migrations/" + mig_id.encode()

    def leader(self) -> bytes:
        return self.root + b"leader"

    def ca(self, name: str = "") -> bytes:
        """The cluster CA (``root``), the join tokens (``tokens/<role>``), removed nodes (``denied/<id>``)."""
        return self.root + b"ca/" + name.encode()

    def net(self) -> bytes:
        return self.root + b"net/"

    def object(self, kind: str, name: str = "") -> bytes:
        """A secret (``secrets/<name>``) or config (``configs/<name>``): scheduler/objects.py."""
        if kind not in ("secret", "config"):
            raise ValueError(f"unknown object kind {kind!r}")
        return self.root + kind.encode() + b"s/" + name.encode()

    def network(self, name: str = "") -> bytes:
        return self.root + b"net/networks/" + name.encode()

    def ipam(self, network: str | None = None, ip: str = "") -> bytes:
        return self.root + b"net/ipam/" + (network.encode() + b"/" + ip.encode() if network is not None else b"")

    def quarantine(self, network: str | None = None, ip: str = "") -> bytes:
        return self.root + b"net/quarantine/" + (network.encode() + b"/" + ip.encode()
                                                 if network is not None else b"")

    def name_of(self, key: bytes, prefix: bytes) -> str:
        return key[len(prefix):].decode()


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field, 100,000 times
class Put:
    key: bytes
    value: bytes
    expect: int | None  # mod_revision the key must have; 0: must not exist; None: unguarded
    lease: int = 0


@dataclass(slots=True)
class Delete:
    key: bytes
    expect: int | None


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(slots=True)
class Snapshot:
    """Everything at one revision, as a new leader rebuilds its view."""

    revision: int
    nodes: dict[str, Node] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    migrations: dict[str, Migration] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    allocations: dict[tuple[str, str], Allocation] = field(default_factory=dict)  # (network, ip)
    quarantine: dict[tuple[str, str], Quarantined] = field(default_factory=dict)


@dataclass(slots=True)
class BatchResult:
    revision: int = 0  # highest revision written
    written: int = 0  # ops committed
    transactions: int = 0
    conflicts: list[tuple[list[Op], Conflict]] = field(default_factory=list)  # batches that lost


# One encoder for every value; values are trees, so the circular-reference check (which more than
# doubles the cost of a small task) buys nothing.
_encode_json = json.JSONEncoder(separators=(",", ":"), check_circular=False, ensure_ascii=False).encode


def _dumps(obj: Any) -> bytes:
    return _encode_json(codec.encode(obj)).encode()


def _loads(raw: bytes, key: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:
        raise StoreError(f"{key.decode(errors='replace')}: not JSON: {e}") from e


def _range_end(prefix: bytes) -> bytes:
    return bytes(aetcd.utils.prefix_range_end(prefix))


def grpc_target(endpoints: Sequence[tuple[str, int]]) -> str:
    """One gRPC target naming every etcd member ("ipv4:a:p,b:q,..."): the channel's pick_first
    policy connects to the first member that answers and, when that one fails, to the next, so
    every request and watch goes on through any member left (as etcd's own clientv3 does).
    Names are resolved here: gRPC's static address lists take addresses only."""
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    if len(endpoints) == 1:
        host, port = endpoints[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    v4: list[str] = []
    v6: list[str] = []
    for host, port in endpoints:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ValueError(f"etcd endpoint {host}:{port}: {e.strerror}") from e
        fam, *_, addr = infos[0]
        (v6 if fam == socket.AF_INET6 else v4).append(f"[{addr[0]}]:{port}" if fam == socket.AF_INET6
                                                      else f"{addr[0]}:{port}")
    if v4 and v6:
        raise ValueError("etcd endpoints mix IPv4 and IPv6 addresses: give one family")
    return ("ipv4:" + ",".join(v4)) if v4 else ("ipv6:" + ",".join(v6))


def _client(target: str, options: dict[str, Any]) -> Any:
    """aetcd's client on a gRPC target of several members: it builds its channel from
    f"{host}:{port}", so the target is split at its last colon to come out whole."""
    host, _, port = target.rpartition(":")
    return aetcd.Client(host=host, port=int(port), options=options)


class Store:
    def __init__(self, host: str = "127.0.0.1", port: int = 2379, *, root: bytes = ROOT,
                 timeout: float = 10.0, endpoints: Sequence[tuple[str, int]] = ()) -> None:
        """endpoints: every etcd member (host, port); without them, the one at host:port."""
        self.endpoints = list(endpoints) or [(host, port)]
        self.host, self.port = self.endpoints[0]
        self.timeout = timeout
        self.where = ",".join(f"{h}:{p}" for h, p in self.endpoints)  # for errors
        self.keys = Keys(root)
        self.client = _client(grpc_target(self.endpoints), _GRPC_OPTIONS)

    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = 2379, *, root: bytes = ROOT,
                      timeout: float = 5.0, endpoints: Sequence[tuple[str, int]] = ()) -> Store:
        """A store whose etcd answered; Unavailable with the address if it does not within `timeout`."""
        store = cls(host, port, root=root, timeout=timeout, endpoints=endpoints)
        try:
            await store.client.connect()
            await asyncio.wait_for(store.client.kvstub.Range(rpc.RangeRequest(key=store.keys.leader())),
                                   timeout)
        except (TimeoutError, grpc.aio.AioRpcError, aetcd.exceptions.ClientError) as e:
            await store.close()
            raise Unavailable(f"etcd at {store.where} does not answer: {_why(e)}") from e
        return store

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> Store:
        await self.client.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- raw guarded transactions -------------------------------------------------------------

    async def commit(self, ops: Sequence[Op]) -> int:
        """Write `ops` in one transaction if every guard holds; the new revision, or Conflict."""
        if not ops:
            return 0
        if len(ops) > MAX_TXN_OPS:
            raise ValueError(f"{len(ops)} operations in one transaction; etcd allows {MAX_TXN_OPS}")
        compare, success = [], []
        Compare, RequestOp, PutRequest = rpc.Compare, rpc.RequestOp, rpc.PutRequest
        equal, mod = rpc.Compare.EQUAL, rpc.Compare.MOD
        for op in ops:
            if op.expect is not None:
                compare.append(Compare(key=op.key, result=equal, target=mod, mod_revision=op.expect))
            if isinstance(op, Put):
                success.append(RequestOp(request_put=PutRequest(key=op.key, value=op.value, lease=op.lease)))
            else:
                success.append(RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key)))
        resp = await self._call(self.client.kvstub.Txn, rpc.TxnRequest(compare=compare, success=success))
        if resp.succeeded:
            return int(resp.header.revision)
        # Lost: read the guarded keys back so Conflict names the ones that moved. A separate read
        # (not a failure branch) keeps the common, successful transaction half the size.
        guarded = [op for op in ops if op.expect is not None]
        reads = [RequestOp(request_range=rpc.RangeRequest(key=op.key, keys_only=True)) for op in guarded]
        back = await self._call(self.client.kvstub.Txn, rpc.TxnRequest(success=reads))
        moved = []
        for op, r in zip(guarded, back.responses, strict=True):
            kvs = r.response_range.kvs
            actual = kvs[0].mod_revision if kvs else 0
            if actual != op.expect:
                moved.append(op.key)
        raise Conflict(moved or [op.key for op in guarded])

    async def commit_batches(self, ops: Sequence[Op], *, batch: int = MAX_TXN_OPS,
                             concurrency: int = 8, group: Sequence[int] | None = None) -> BatchResult:
        """Write many ops as transactions of at most `batch` ops, `concurrency` in flight.

        `group` (sizes summing to len(ops)) keeps related ops in one transaction (a task and the one
        it replaces); a lost batch is reported, not raised, so the rest still lands.
        """
        batches: list[list[Op]] = []
        current: list[Op] = []
        sizes = group if group is not None else [1] * len(ops)
        i = 0
        for size in sizes:
            unit = list(ops[i:i + size])
            i += size
            if len(current) + len(unit) > batch:
                batches.append(current)
                current = []
            current.extend(unit)
        if current:
            batches.append(current)
        result = BatchResult(transactions=len(batches))
        sem = asyncio.Semaphore(concurrency)

        async def one(b: list[Op]) -> None:
            async with sem:
                try:
                    rev = await self.commit(b)
                except Conflict as c:
                    result.conflicts.append((b, c))
                    return
            result.written += len(b)
            result.revision = max(result.revision, rev)

        await asyncio.gather(*(one(b) for b in batches))
        return result

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            await self.client.connect()
            return await method(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"etcd at {self.where}: {_why(e)}") from e
            raise StoreError(f"etcd: {_why(e)}") from e

    async def range(self, prefix: bytes, *, revision: int = 0) -> tuple[int, list[Any]]:
        """(revision, kvs) of every key under prefix, in one consistent read."""
        resp = await self._call(self.client.kvstub.Range,
                                rpc.RangeRequest(key=prefix, range_end=_range_end(prefix), revision=revision))
        return int(resp.header.revision), list(resp.kvs)

    async def get_raw(self, key: bytes) -> tuple[bytes, int] | None:
        resp = await self._call(self.client.kvstub.Range, rpc.RangeRequest(key=key))
        if not resp.kvs:
            return None
        return bytes(resp.kvs[0].value), int(resp.kvs[0].mod_revision)

    async def list_objects(self, kind: str) -> list[objects.Stored]:
        prefix = self.keys.object(kind)
        _, items = await self.range(prefix)
        return [objects.decode(kind, bytes(kv.value), int(kv.mod_revision)) for kv in items]

    async def get_object(self, kind: str, name: str) -> objects.Stored | None:
        raw = await self.get_raw(self.keys.object(kind, name))
        return None if raw is None else objects.decode(kind, raw[0], raw[1])

    # -- typed ops (build guarded writes from records; mod_revision 0 means "create") ----------

    def put_node_op(self, node: Node) -> Put:
        return Put(self.keys.node(node.name), _dumps(node), node.mod_revision)

    def put_service_op(self, svc: Service) -> Put:
        return Put(self.keys.service(svc.name), _dumps(svc), svc.mod_revision)

    def delete_service_op(self, svc: Service) -> Delete:
        return Delete(self.keys.service(svc.name), svc.mod_revision)

    def put_task_op(self, task: Task) -> Put:
        raw = codec.task_json(task)
        return Put(self.keys.task(task.service, task.id), raw, task.mod_revision)

    def delete_task_op(self, task: Task) -> Delete:
        return Delete(self.keys.task(task.service, task.id), task.mod_revision)

    # -- typed reads ---------------------------------------------------------------------------

    async def get_node(self, name: str) -> Node | None:
        got = await self.get_raw(self.keys.node(name))
        return None if got is None else self._node(got[0], got[1], self.keys.node(name))

    async def list_nodes(self) -> list[Node]:
        _, kvs = await self.range(self.keys.nodes())
        return [self._node(kv.value, kv.mod_revision, kv.key) for kv in kvs]

    async def get_service(self, name: str) -> Service | None:
        got = await self.get_raw(self.keys.service(name))
        return None if got is None else self._service(got[0], got[1], self.keys.service(name))

    async def list_services(self) -> list[Service]:
        _, kvs = await self.range(self.keys.service())
        return [self._service(kv.value, kv.mod_revision, kv.key) for kv in kvs]

    async def get_task(self, service: str, task_id: str) -> Task | None:
        got = await self.get_raw(self.keys.task(service, task_id))
        return None if got is None else self._task(got[0], got[1], self.keys.task(service, task_id))

    async def list_tasks(self, service: str | None = None) -> list[Task]:
        _, kvs = await self.range(self.keys.tasks(service))
        return [self._task(kv.value, kv.mod_revision, kv.key) for kv in kvs]

    async def alive_nodes(self) -> set[str]:
        prefix = self.keys.alive()
        _, kvs = await self.range(prefix)
        return {self.keys.name_of(kv.key, prefix) for kv in kvs}

    async def snapshot(self) -> Snapshot:
        """Nodes, services, tasks and liveness at one revision (one range read over /dockyard/).

        A node without its alive key is reported DOWN whatever its record says.
        """
        rev, kvs = await self.range(self.keys.root)
        snap = Snapshot(revision=rev)
        p_nodes, p_alive = self.keys.nodes(), self.keys.alive()
        p_svc, p_tasks = self.keys.service(), self.keys.tasks()
        p_mig = self.keys.migration()
        nodes: list[Node] = []
        for kv in kvs:
            key = bytes(kv.key)
            if key.startswith(p_tasks):
                t = self._task(kv.value, kv.mod_revision, key)
                snap.tasks[t.id] = t
            elif key.startswith(p_nodes):
                nodes.append(self._node(kv.value, kv.mod_revision, key))
            elif key.startswith(p_svc):
                s = self._service(kv.value, kv.mod_revision, key)
                snap.services[s.name] = s
            elif key.startswith(p_alive):
                snap.alive.add(self.keys.name_of(key, p_alive))
            elif key.startswith(p_mig):
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    m = Migration.decode(kv.value, int(kv.mod_revision))
                    snap.migrations[m.id] = m
            elif key.startswith(self.keys.net()):
                self.net_record(key, bytes(kv.value), int(kv.mod_revision), snap)
        for n in nodes:
            n.status = NodeStatus.READY if n.name in snap.alive else NodeStatus.DOWN
            snap.nodes[n.name] = n
        return snap

    def net_record(self, key: bytes, raw: bytes | None, rev: int, into: Snapshot | Any) -> None:
        """Apply one /dockyard/net/ key (raw None: deleted) to `into`'s networks, allocations and
        quarantine (a Snapshot or the view). A value that does not decode is logged away, not fatal:
        one bad record must not stop a replica from loading the rest."""
        k = self.keys
        try:
            if key.startswith(k.network()):
                name = k.name_of(key, k.network())
                into.networks.pop(name, None)
                if raw is not None:
                    into.networks[name] = Network.decode(raw, rev)
                return
            if key.startswith(k.ipam()):
                network, _, ip = k.name_of(key, k.ipam()).partition("/")
                into.allocations.pop((network, ip), None)
                if raw is not None:
                    into.allocations[network, ip] = Allocation.decode(network, ip, raw, rev)
            elif key.startswith(k.quarantine()):
                network, _, ip = k.name_of(key, k.quarantine()).partition("/")
                into.quarantine.pop((network, ip), None)
                if raw is not None:
                    into.quarantine[network, ip] = Quarantined.decode(network, ip, raw, rev)
        except (ValueError, TypeError, KeyError) as e:
            import logging

            logging.getLogger("dockyard.scheduler.store").warning("%s: %s", key.decode(errors="replace"), e)

    def _node(self, raw: bytes, rev: int, key: bytes) -> Node:
        try:
            node = codec.decode(Node, _loads(raw, key))
        except codec.DecodeError as e:
            raise StoreError(f"{key.decode(errors='replace')}: {e}") from e
        node.mod_revision = int(rev)
        return node

    def _service(self, raw: bytes, rev: int, key: bytes) -> Service:
        try:
            svc = codec.decode(Service, _loads(raw, key))
        except codec.DecodeError as e:
            raise StoreError(f"{key.decode(errors='replace')}: {e}") from e
        return Service(spec=svc.spec, version=svc.version, previous_spec=svc.previous_spec, update=svc.update,
                       created_at=svc.created_at, mod_revision=int(rev))

    def _task(self, raw: bytes, rev: int, key: bytes) -> Task:
        try:
            return codec.decode_task(_loads(raw, key), int(rev))
        except codec.DecodeError as e:
            raise StoreError(f"{key.decode(errors='replace')}: {e}") from e

    # -- leases: a node is alive while its lease is kept alive -----------------------------------

    async def grant_lease(self, ttl: int) -> int:
        resp = await self._call(self.client.leasestub.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        return int(resp.ID)

    async def keep_alive(self, lease_id: int) -> bool:
        """Refresh the lease once; False when it already expired (the node must register again)."""
        try:
            await self.client.connect()
            reply = await self.client.refresh_lease(lease_id)
        except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError) as e:
            raise Unavailable(f"etcd at {self.where}: {_why(e)}") from e
        return reply is not None and int(reply.TTL) > 0

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call(self.client.leasestub.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id))

    async def mark_alive(self, node: str, lease_id: int) -> int:
        return await self.commit([Put(self.keys.alive(node), b"", None, lease=lease_id)])

    # -- watches -------------------------------------------------------------------------------

    async def watch(self, prefix: bytes, *, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        """Events under prefix from start_revision (inclusive) on, until the caller stops iterating."""
        try:
            await self.client.connect()
            w = await self.client.watch_prefix(prefix, start_revision=start_revision)
        except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError) as e:
            raise Unavailable(f"etcd at {self.where}: {_why(e)}") from e
        try:
            async for ev in w:
                kind = "put" if ev.kind == "PUT" else "delete"
                yield WatchEvent(kind, bytes(ev.kv.key), bytes(ev.kv.value), int(ev.kv.mod_revision))
        except aetcd.exceptions.ClientError as e:
            raise Unavailable(f"watch on {prefix.decode(errors='replace')}: {_why(e)}") from e
        finally:
            await w.cancel()

    def decode_event(self, ev: WatchEvent) -> Node | Service | Task | str | None:
        """The record a watch event carries (None for a delete); the node name for alive/ keys."""
        k = self.keys
        if ev.key.startswith(k.alive()):
            return k.name_of(ev.key, k.alive())
        if ev.kind == "delete":
            return None
        if ev.key.startswith(k.tasks()):
            return self._task(ev.value, ev.mod_revision, ev.key)
        if ev.key.startswith(k.nodes()):
            return self._node(ev.value, ev.mod_revision, ev.key)
        if ev.key.startswith(k.service()):
            return self._service(ev.value, ev.mod_revision, ev.key)
        return None


def _why(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


def chunks(items: Iterable[Op], size: int = MAX_TXN_OPS) -> list[list[Op]]:
    out: list[list[Op]] = []
    for op in items:
        if not out or len(out[-1]) >= size:
            out.append([])
        out[-1].append(op)
    return out
