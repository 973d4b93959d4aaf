"""The containers' DNS resolver at 127.0.0.11 (as Docker's embedded DNS), fed by the network map.

For each running container on a cluster network the agent opens a UDP and a TCP socket bound to
127.0.0.11:53 *inside the container's network namespace* (a short-lived thread setns()es there,
binds, and comes back: the agent never moves itself), and serves them on its own event loop. The
container's /etc/resolv.conf says `nameserver 127.0.0.11`, `search .` and `options ndots:0`.

Answers come from the map the scheduler streams (agent/netsync.py), for the container's own
networks only (another stack's private network is invisible):
    <task>          web.1 style task name, and the container's name   -> its address
    <service>       full name (st_web), name in its stack (web), aliases -> its virtual IP on the
                    network (agent/runtime/network/vip.py DNATs it to a ready task), or, without
                    one, every ready task's address
    tasks.<service> the same, by any of those names                  -> every ready task's address
    PTR             of an address on those networks                 -> its task name
A ready task is running and not unhealthy. Everything else is forwarded to the host's resolvers
(from the agent's own namespace, so a stub at 127.0.0.53 works), TTL as they say; ours is short
(TTL 2 s) so a changed name is seen quickly. dnslib does the wire format.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.runtime.network import vip
from agent.runtime.network.inside import in_netns
from agent.runtime.network.model import NetworkError

log = logging.getLogger("dockyard.agent.resolver")

ADDRESS = "127.0.0.11"
PORT = 53
TTL = 2
CLONE_NEWNET = 0x40000000
IP_FREEBIND = 15
# `search .`: without a search line a resolver takes the domain of the hostname, and a task's
# hostname is its name (web.3): `web` would be asked as web.3.
RESOLV_CONF = f"nameserver {ADDRESS}\nsearch .\noptions ndots:0\n"


@dataclass(frozen=True, slots=True)
class Record:
    """One endpoint as the resolver sees it."""
    network: str
    ip: str
    task: str
    container: str
    names: tuple[str, ...]
    ready: bool
    container_name: str = ""   # (a plain container's own name: what a --link names)


@dataclass(slots=True)
class Zone:
    """Names -> addresses of a set of networks."""
    a: dict[str, list[str]] = field(default_factory=dict)
    ptr: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, ip: str) -> None:
        ips = self.a.setdefault(name.lower().rstrip("."), [])
        if ip not in ips:
            ips.append(ip)


@dataclass(frozen=True, slots=True)
class Vip:
    network: str
    ip: str
    names: tuple[str, ...]


def zone_of(records: Iterable[Record], networks: Iterable[str], vips: Iterable[Vip] = (),
            links: Iterable[tuple[str, str]] = ()) -> Zone:
    """links: (alias, container name) of this container only (docker's --link on a user network:
    the alias answers with the linked container's address, once it runs)."""
    records = list(records)
    nets = set(networks)
    z = Zone()
    by_vip: set[str] = set()
    for v in vips:  # a service with a virtual IP answers with it; tasks.NAME with its tasks
        if v.network in nets:
            for n in v.names:
                z.add(n, v.ip)
                by_vip.add(n.lower())
    for r in sorted(records, key=lambda r: (r.network, ipaddress.IPv4Address(r.ip))):
        if r.network not in nets:
            continue
        z.add(r.task, r.ip)
        z.add(r.container, r.ip)
        z.ptr[r.ip] = r.task
        if not r.ready:
            continue
        for n in r.names:
            if n.lower() not in by_vip:
                z.add(n, r.ip)
            z.add(f"tasks.{n}", r.ip)
    for alias, target in links:
        for r in records:
            if r.network in nets and r.container_name == target:
                z.add(alias, r.ip)
    return z


def host_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    with contextlib.suppress(OSError):
        for ln in Path(path).read_text().splitlines():
            parts = ln.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    out.append((str(ipaddress.ip_address(parts[1].split("%")[0])), 53))
    return out[:3]


class Answerer:
    """The DNS logic, sockets apart: a query's bytes -> the reply's bytes."""

    def __init__(self, zone: Zone, upstream: list[tuple[str, int]], timeout: float = 2.0) -> None:
        self._zone = zone
        self.upstream = upstream
        self.timeout = timeout
        # Replies to our own names by the query's bytes after its id: a repeated query is answered
        # without parsing (dnslib's parse and pack are most of an answer's cost).
        self._cache: dict[bytes, bytes] = {}

    @property
    def zone(self) -> Zone:
        return self._zone

    @zone.setter
    def zone(self, z: Zone) -> None:
        self._zone = z
        self._cache = {}

    async def answer(self, data: bytes) -> bytes | None:
        data = bytes(data)
        cached = self._cache.get(data[2:])
        if cached is not None:
            return data[:2] + cached
        out = await self._answer(data)
        if out is not None and self._ours(data) and len(self._cache) < 4096:
            self._cache[data[2:]] = out[2:]
        return out

    def _ours(self, data: bytes) -> bool:
        from dnslib import DNSRecord

        with contextlib.suppress(Exception):
            q = DNSRecord.parse(data)
            name = str(q.questions[0].qname).lower().rstrip(".")
            if name.endswith(".in-addr.arpa"):
                return ".".join(reversed(name[: -len(".in-addr.arpa")].split("."))) in self._zone.ptr
            return name in self._zone.a
        return False

    async def _answer(self, data: bytes) -> bytes | None:
        from dnslib import PTR as PTRrec
        from dnslib import QTYPE, RCODE, RR, A, DNSRecord

        try:
            q = DNSRecord.parse(data)
        except Exception:
            return None  # not DNS: dropped, as any server would
        if not q.questions:
            return None
        question = q.questions[0]
        name = str(question.qname).lower().rstrip(".")
        qtype = QTYPE[question.qtype]
        reply = q.reply()
        if qtype == "PTR" and name.endswith(".in-addr.arpa"):
            ip = ".".join(reversed(name[: -len(".in-addr.arpa")].split(".")))
            task = self.zone.ptr.get(ip)
            if task is not None:
                reply.add_answer(RR(question.qname, QTYPE.PTR, rdata=PTRrec(task + "."), ttl=TTL))
                return bytes(reply.pack())
        ips = self.zone.a.get(name)
        if ips is not None:
            if qtype in ("A", "ANY"):
                for ip in ips:
                    reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(ip), ttl=TTL))
            return bytes(reply.pack())  # AAAA of a name of ours: no data, not an error
        if not self.upstream:
            reply.header.rcode = RCODE.SERVFAIL
            return bytes(reply.pack())
        got = await self.forward(data)
        if got is None:
            reply.header.rcode = RCODE.SERVFAIL
            return bytes(reply.pack())
        return got

    async def forward(self, data: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        for server, port in self.upstream:
            fam = socket.AF_INET6 if ":" in server else socket.AF_INET
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                try:
                    await loop.sock_connect(s, (server, port))
                    await loop.sock_sendall(s, data)
                    return await asyncio.wait_for(loop.sock_recv(s, 65535), self.timeout)
                except (OSError, TimeoutError):
                    continue
        return None


def sockets_in(pid: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on 127.0.0.11:53 in pid's network namespace, made by a thread of its own
    that setns()es there and ends (a thread's namespace is its own; the agent's stays put)."""
    def work() -> tuple[socket.socket, socket.socket]:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):  # lo may not be up yet: the init brings it up
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            udp.bind((ADDRESS, PORT))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((ADDRESS, PORT))
            tcp.listen(64)
        except OSError:
            udp.close()
            tcp.close()
            raise
        return udp, tcp

    try:
        socks = in_netns(pid, work)
    except OSError as err:
        raise OSError(err.errno, f"resolver sockets in the namespace of pid {pid}: {err.strerror}") from None
    for s in socks:
        s.setblocking(False)
    return socks


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: ContainerResolver) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a _SelectorDatagramTransport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        out = await self.server.answerer.answer(data)
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


class ContainerResolver:
    """127.0.0.11 of one container."""

    def __init__(self, container_id: str, networks: tuple[str, ...], answerer: Answerer, pid: int = 0,
                 netns: int = 0) -> None:
        self.container_id = container_id
        self.pid = pid
        self.netns = netns  # its network namespace's inode: VIP rules go there only (vip.apply)
        self.vip_rules = ""  # the DY-VIP ruleset last applied in its namespace
        self.networks = networks
        self.links: tuple[tuple[str, str], ...] = ()
        self.answerer = answerer
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        self._udp = transport
        self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), 10)
                data = await reader.readexactly(struct.unpack("!H", head)[0])
                out = await self.answerer.answer(data)
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for t in self._tasks:
            t.cancel()


class Resolvers:
    """Every container's resolver on this host; zones rebuilt when the network map changes."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.vips: list[Vip] = []
        self._vip_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vip")
        self.upstream = host_nameservers()
        self.by_container: dict[str, ContainerResolver] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def set_records(self, records: list[Record], vips: list[Vip] | None = None) -> None:
        self.records = records
        self.vips = vips if vips is not None else self.vips
        stale = []
        for r in self.by_container.values():
            r.answerer.zone = zone_of(records, r.networks, self.vips, r.links)
            text = self._vip_rules(r.networks)
            if text != r.vip_rules:
                r.vip_rules = text
                stale.append((r.pid, r.netns, text))
        if stale and self.loop is not None:  # one thread: rulesets land in the order they were made
            self.loop.run_in_executor(self._vip_thread, self._apply_vips, stale)

    @staticmethod
    def _apply_vips(stale: list[tuple[int, int, str]]) -> None:
        for pid, netns, text in stale:
            try:
                vip.apply(pid, text, first=False, netns=netns)
            except NetworkError as e:
                log.warning("%s", e)

    def _vip_backends(self, networks: tuple[str, ...]) -> list[tuple[str, list[str]]]:
        out = []
        for v in self.vips:
            if v.network in networks and v.names:
                out.append((v.ip, [r.ip for r in self.records
                                   if r.network == v.network and r.ready and v.names[0] in r.names]))
        return out

    def _vip_rules(self, networks: tuple[str, ...]) -> str:
        return vip.ruleset(self._vip_backends(networks), first=False)

    def open(self, container_id: str, networks: tuple[str, ...], pid: int,
             links: tuple[tuple[str, str], ...] = ()) -> None:
        """From any thread (the agent wires a container's namespace in one): bind now, so queries
        sent before the loop serves them wait in the socket instead of being refused."""
        assert self.loop is not None
        netns = vip.netns_of(pid)
        udp, tcp = sockets_in(pid)
        res = ContainerResolver(container_id, networks,
                                Answerer(zone_of(self.records, networks, self.vips, links), self.upstream), pid,
                                netns)
        res.links = links
        try:
            res.vip_rules = self._vip_rules(networks)
            vip.apply(pid, vip.ruleset(self._vip_backends(networks), first=True), first=True, netns=netns)
        except NetworkError as e:
            udp.close()
            tcp.close()
            raise OSError(str(e)) from e

        def start() -> None:
            old = self.by_container.pop(container_id, None)
            if old is not None:
                old.close()
            self.by_container[container_id] = res
            res.spawn(res.serve(udp, tcp))

        self.loop.call_soon_threadsafe(start)

    def set_networks(self, container_id: str, networks: tuple[str, ...],
                     links: tuple[tuple[str, str], ...] = ()) -> None:
        """A running container joined or left a network (the zones follow at set_records)."""
        res = self.by_container.get(container_id)
        if res is not None:
            res.networks, res.links = networks, links

    def close(self, container_id: str) -> None:
        res = self.by_container.pop(container_id, None)
        if res is not None:
            res.close()

    def update(self, msg: Any) -> None:
        """A network map (protos NetworkMap) -> the records every zone is built from."""
        nets = [n for n in msg.networks if not n.ingress]  # the mesh's network carries no names (as Swarm's)
        self.set_records([Record(n.name, e.ip, e.task, e.container, tuple(e.names), e.ready)
                          for n in nets for e in n.endpoints if e.task],
                         [Vip(n.name, v.ip, tuple(v.names)) for n in nets for v in n.vips])

    def on_change(self, c: Any) -> None:
        """ContainerManager.on_change: a container that no longer runs has no resolver. "created"
        keeps it: the resolver is opened while the container starts (its namespace wired, the
        status not yet running), and a save of the container in that window must not close it."""
        if c.id in self.by_container and c.state.status not in ("created", "running", "paused"):
            self.close(c.id)

    def close_all(self) -> None:
        for cid in list(self.by_container):
            self.close(cid)
