"""The agent's side of the cluster network: list then watch the scheduler's network map
(WatchNetworks), program the kernel to match it, and repair it periodically.

The scheduler streams the whole map (every network and endpoint with its node and VTEP) at the
start of a stream and again after each change; a reconnect is a relist. On each map and every
`period` seconds the agent, for every network that has an endpoint here or a bridge here:
ensures its bridge and VXLAN port, and makes the FDB and neighbour tables exactly its remote
endpoints (agent/runtime/network/overlay.py: extra entries deleted, missing and wrong ones
replaced). A bridge of a network that is gone, or that has no local endpoint and no container
port left, is removed. So a missed event, an agent restart or a scheduler failover heals within
one period; while the scheduler is away the kernel keeps what it last had (connections go on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from agent.runtime.network.mesh import Mesh, MeshPort
from agent.runtime.network.model import NetworkError
from agent.runtime.network.overlay import Diff, OverlayNet, Overlays, Peer
from protos import cluster_pb2 as pb

log = logging.getLogger("dockyard.agent.netsync")

PERIOD = 5.0  # seconds between repairs of the kernel tables


@dataclass(frozen=True, slots=True)
class MeshPlan:
    """This node's part of the routing mesh: its own address on the ingress network, the ports."""
    network: str
    address: str
    prefixlen: int
    ports: tuple[MeshPort, ...]


@dataclass(slots=True)
class Desired:
    revision: int = 0
    networks: dict[str, OverlayNet] = field(default_factory=dict)
    local: dict[str, set[str]] = field(default_factory=dict)  # network -> ips of endpoints on this node
    peers: dict[str, list[Peer]] = field(default_factory=dict)  # network -> remote endpoints
    mesh: MeshPlan | None = None


NODE_PREFIX = "node:"  # (scheduler/network.py) an endpoint that is a node's own address


def desired_of(msg: pb.NetworkMap, node: str) -> Desired:
    d = Desired(revision=msg.revision)
    for n in msg.networks:
        d.networks[n.name] = OverlayNet(n.name, n.vni, n.subnet, n.mtu)
        d.local[n.name] = {e.ip for e in n.endpoints if e.node == node}
        d.peers[n.name] = [Peer(e.ip, e.mac, e.vtep) for e in n.endpoints if e.node != node and e.vtep]
        own = next((e.ip for e in n.endpoints if e.node == node and e.task_id == NODE_PREFIX + node), "")
        if n.ingress and own:
            ports = tuple(MeshPort(m.protocol, m.published,
                                   tuple(f"{e.ip}:{m.target}" for e in n.endpoints if e.service == m.service and e.ready))
                          for m in n.mesh_ports)
            d.mesh = MeshPlan(n.name, own, int(n.subnet.rsplit("/", 1)[1]), ports)
    return d


class NetworkSync:
    def __init__(self, node: str, overlays: Overlays, stub: Callable[[], Any], *, period: float = PERIOD,
                 on_map: Callable[[pb.NetworkMap], None] | None = None) -> None:
        self.node = node
        self.on_map = on_map  # the resolvers' records come from the same map
        self.overlays = overlays
        self.mesh = Mesh(overlays.owner)
        self.stub = stub  # -> the current scheduler replica's stub (the join loop moves it on)
        self.period = period
        self.desired: Desired | None = None
        self.last_diff: dict[str, Diff] = {}
        self.passes = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(), name="netwatch"),
                       loop.create_task(self._repair(), name="netrepair")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _watch(self) -> None:
        while True:
            try:
                call = self.stub().WatchNetworks(pb.WatchNetworksRequest(node=self.node))
                async for msg in call:
                    self.desired = desired_of(msg, self.node)
                    self._wake.set()
                    if self.on_map is not None:
                        self.on_map(msg)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.debug("network watch: %s", e.details())
            except Exception as e:  # a bug must not stop the host from keeping its network
                log.exception("network watch: %s", e)
            await asyncio.sleep(0.5)

    async def _repair(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period)
            self._wake.clear()
            if self.desired is None:
                continue
            try:
                await asyncio.to_thread(self.reconcile, self.desired)
            except Exception as e:
                log.exception("network reconcile: %s", e)

    def reconcile(self, d: Desired) -> dict[str, Diff]:
        """One pass: the kernel made equal to `d` (run in a thread: netlink calls block)."""
        t0 = time.monotonic()
        diffs: dict[str, Diff] = {}
        by_vni = {n.vni: n for n in d.networks.values()}
        installed = self.overlays.installed()
        for vni in sorted(installed - set(by_vni)):
            if not self.overlays.ports(vni):
                log.info("overlay VNI %d: its network is gone; removing its bridge", vni)
                self.overlays.remove(vni)
        for name, net in sorted(d.networks.items()):
            here = net.vni in installed
            if not d.local.get(name) and not here:
                continue  # nothing of this network on this host
            if not d.local.get(name) and here and not self.overlays.ports(net.vni):
                self.overlays.remove(net.vni)
                continue
            try:
                self.overlays.ensure(net)
                diffs[name] = diff = self.overlays.program(net.vni, d.peers.get(name, []))
            except NetworkError as e:
                log.error("network %s: %s", name, e)
                continue
            if diff.changes and self.passes:
                log.info("network %s: %d kernel entries repaired or updated (%s)", name, diff.changes,
                         ", ".join(diff.details[:6]))
        self._mesh(d, diffs)
        self.passes += 1
        self.last_diff = diffs
        log.debug("network reconcile at revision %d in %.1f ms", d.revision, (time.monotonic() - t0) * 1000)
        return diffs

    def _mesh(self, d: Desired, diffs: dict[str, Diff]) -> None:
        """The routing mesh's rules, once the ingress bridge is there (else none: a DNAT to a
        network this host cannot reach would swallow the port)."""
        plan = d.mesh
        try:
            if plan is None or plan.network not in diffs:
                if self.mesh.installed():
                    log.info("routing mesh: no port published here any more; rules removed")
                    self.mesh.remove()
                return
            vni = d.networks[plan.network].vni
            self.overlays.set_address(vni, plan.address, plan.prefixlen)
            if self.mesh.apply(self.overlays.bridge_name(vni), plan.address, plan.ports):
                log.info("routing mesh: %s", ", ".join(f"{p.published}/{p.protocol} -> {len(p.backends)} task(s)"
                                                       for p in plan.ports) or "no ports")
        except NetworkError as e:
            log.error("routing mesh: %s", e)
