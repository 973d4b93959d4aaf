"""Every gRPC channel and server of dockyard is made here, and only here (tests/unit/test_transport.py
fails if ``insecure_channel``, ``add_insecure_port`` or ``grpc.aio.server`` appears anywhere else).

- ``dial(address, identity, peer)``: an asyncio channel; ``dial_blocking`` the same for the CLI and
  bootstrap, which are synchronous. ``address`` is ``host:port``, ``tcp://host:port`` or
  ``unix:///path``.
- ``server(identity)`` makes a server; ``serve(server, address, identity)`` binds it and returns the
  port, or raises ``BindError`` naming the address.
- ``Identity`` says who this process is (agent, scheduler, cli). Which options a channel gets
  depends on who dials whom (``_RECONNECT``), and that is also where TLS belongs: the mutual-TLS
  change adds the certificate to ``Identity`` and swaps the ``insecure_*`` calls below for their
  secure twins, in this one file.
"""

from __future__ import annotations

import contextvars
import enum
import inspect
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

if TYPE_CHECKING:  # cryptography is imported only by a process that uses TLS (the CLI's start stays fast)
    from common import pki

SCHEDULER_NAME = "scheduler.dockyard"  # every scheduler's certificate carries it; agents and CLIs dial it


def node_name(node_id: str) -> str:
    """The DNS SAN a node's certificate carries and its peers dial it by."""
    return f"{node_id}.node.dockyard"

# Image layers, checkpoint archives and log chunks cross in single messages (gRPC's default is 4 MiB).
MAX_MESSAGE = 64 << 20


class Role(enum.Enum):
    AGENT = "agent"
    SCHEDULER = "scheduler"
    CLI = "cli"


@dataclass(frozen=True)
class Identity:
    """Who this process is toward the peers it dials and the clients it serves. With ``tls`` (the
    cluster CA, this process's certificate and key) every TCP channel and server is mutual TLS;
    unix sockets stay local trust (root-only permissions), as docker.sock."""

    role: Role
    tls: pki.Bundle | None = None

    def with_tls(self, bundle: pki.Bundle) -> Identity:
        return Identity(self.role, bundle)


AGENT = Identity(Role.AGENT)
SCHEDULER = Identity(Role.SCHEDULER)
CLI = Identity(Role.CLI)


class BindError(Exception):
    """A server could not listen on an address (in use, not ours, bad form)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot bind {address} ({reason})")
        self.address = address
        self.reason = reason


# Every channel: cluster traffic never goes through an HTTP proxy from the environment, and messages
# up to MAX_MESSAGE either way.
_BASE: tuple[tuple[str, int], ...] = (
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)

# Reconnect backoff (initial, max, in ms) by (who dials, whom). gRPC's default is 1 s growing to
# 120 s; the long-lived cluster channels must come back within the failover budget (DESIGN: a lost
# host's tasks run elsewhere within 2 s).
_RECONNECT: dict[tuple[Role, Role], tuple[int, int]] = {
    (Role.AGENT, Role.SCHEDULER): (100, 500),   # the join loop finds a restarted replica at once
    (Role.SCHEDULER, Role.AGENT): (200, 1000),  # dispatch, log and exec proxies
}

_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    # gRPC sets SO_REUSEPORT by default, so a second server on a taken port "binds" and shares its
    # connections: off, so that a taken port is an error naming it.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)


def channel_options(identity: Identity, peer: Role) -> list[tuple[str, int]]:
    """The options of a channel from ``identity`` to a ``peer``: the table above, in one list."""
    options = list(_BASE)
    backoff = _RECONNECT.get((identity.role, peer))
    if backoff is not None:
        options += [("grpc.initial_reconnect_backoff_ms", backoff[0]), ("grpc.max_reconnect_backoff_ms", backoff[1])]
    return options


def target(address: str) -> str:
    """gRPC's target for one of our addresses: ``tcp://`` is ours, gRPC wants plain ``host:port``."""
    if not address:
        raise ValueError("empty address: give host:port or unix:///path")
    return address.removeprefix("tcp://")


def peer_name(peer: Role, node_id: str = "") -> str:
    """The name a peer's certificate must carry: we dial by identity, never by IP
    (``ssl_target_name_override``), so a host that answers with another node's certificate fails."""
    if peer is Role.SCHEDULER:
        return SCHEDULER_NAME
    if not node_id:
        raise ValueError(f"dialling a {peer.value} over TLS needs its node id (its certificate's name)")
    return node_name(node_id)


def _secure(address: str, identity: Identity) -> pki.Bundle | None:
    return None if address.startswith("unix:") else identity.tls


def _channel_credentials(tls: pki.Bundle) -> grpc.ChannelCredentials:
    # Never root_certificates=None: that would trust the system's roots.
    return grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)


def dial(address: str, identity: Identity, peer: Role, node_id: str = "") -> grpc.aio.Channel:
    """An asyncio channel from this process (``identity``) to a ``peer`` at ``address``; over TLS
    the peer must present the certificate of ``peer_name(peer, node_id)``."""
    options: list[tuple[str, Any]] = list(channel_options(identity, peer))
    tls = _secure(address, identity)
    if tls is None:
        return grpc.aio.insecure_channel(target(address), options=options)
    options.append(("grpc.ssl_target_name_override", peer_name(peer, node_id)))
    return grpc.aio.secure_channel(target(address), _channel_credentials(tls), options=options)


def dial_blocking(address: str, identity: Identity, peer: Role, node_id: str = "") -> grpc.Channel:
    """A synchronous channel, for the CLI and the bootstrap's checks."""
    options: list[tuple[str, Any]] = list(channel_options(identity, peer))
    tls = _secure(address, identity)
    if tls is None:
        return grpc.insecure_channel(target(address), options=options)
    options.append(("grpc.ssl_target_name_override", peer_name(peer, node_id)))
    return grpc.secure_channel(target(address), _channel_credentials(tls), options=options)


def dial_etcd(target_: str, tls: pki.Bundle | None, options: Mapping[str, Any], server_name: str = "") -> grpc.aio.Channel:
    """The scheduler's channel to etcd (``target_`` as grpc takes it: ``ipv4:a:p,b:p``). With ``tls``
    (etcd's own CA and the scheduler's client certificate: scheduler/etcd_tls.py) mutual TLS,
    checked against ``server_name`` when given (our etcd's ``etcd.dockyard``), else the address."""
    opts: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0), *options.items()]
    if tls is None:
        return grpc.aio.insecure_channel(target_, options=opts)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target_, _channel_credentials(tls), options=opts)


def dial_join(address: str, ca_pem: bytes) -> grpc.aio.Channel:
    """A channel to a scheduler's join port: server TLS only, trusting only ``ca_pem`` (the CA the
    joiner read from the handshake and checked against its token's digest)."""
    options: list[tuple[str, Any]] = [*_BASE, ("grpc.ssl_target_name_override", SCHEDULER_NAME)]
    return grpc.aio.secure_channel(target(address), grpc.ssl_channel_credentials(ca_pem), options=options)


_ENCODING_DER = 2  # _ssl.ENCODING_DER (PEM is 1): how 3.11's _ssl.Certificate.public_bytes names DER


def read_server_ca(address: str, timeout: float = 5.0) -> bytes:
    """The root (last) certificate a TLS server presents, PEM, read without verifying anything: the
    joiner hashes it against its token's digest before trusting it or sending any secret (Swarm's
    DownloadRootCA). Our servers present leaf + CA."""
    host, _, port = target(address).rpartition(":")
    if not port.isdigit():
        raise ValueError(f"{address}: expected host:port")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted yet: the digest check decides
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=SCHEDULER_NAME) as tls:
        sslobj: Any = tls._sslobj  # type: ignore[attr-defined]  # public as get_unverified_chain() in 3.13
        chain = sslobj.get_unverified_chain() or []
    if not chain:
        raise ssl.SSLError(f"{address} presented no certificate")
    last = chain[-1]
    der = last.public_bytes(_ENCODING_DER) if hasattr(last, "public_bytes") else bytes(last)  # 3.11 | 3.13
    return ssl.DER_cert_to_PEM_cert(der).encode()


def served_certificate(address: str, identity: Identity, timeout: float = 5.0) -> bytes:
    """The leaf certificate a mutual-TLS port serves to ``identity`` (PEM), its chain not checked:
    what `cluster ca --rotate --finish` reads of each node to see which root issued it."""
    host, _, port = target(address).rpartition(":")
    if identity.tls is None or not port.isdigit():
        raise ValueError(f"{address}: a TLS identity and host:port are needed")
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the issuer is what is looked at, by the caller
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as d:  # ssl loads a client key from files only
        cert, key = f"{d}/cert.pem", f"{d}/key.pem"
        with open(cert, "wb") as f:
            f.write(identity.tls.cert_pem)
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(identity.tls.key_pem)
        ctx.load_cert_chain(cert, key)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"{address} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def server(identity: Identity, authorize: grpc.aio.ServerInterceptor | None = None) -> grpc.aio.Server:
    """An asyncio server for this process; bind it with ``serve``. ``authorize`` (an ``Authorizer``)
    guards every method of every kind."""
    return grpc.aio.server(options=list(_SERVER_OPTIONS), interceptors=[authorize] if authorize else None)


class CertSlot:
    """The certificate a TLS server presents, swapped without a restart: a renewed (or, during a CA
    rotation, re-issued) bundle set here is served from the next handshake on (gRPC asks the
    fetcher on every new connection; open connections keep theirs)."""

    def __init__(self, bundle: pki.Bundle) -> None:
        self.bundle = bundle

    def set(self, bundle: pki.Bundle) -> None:
        self.bundle = bundle

    def credentials(self, client_auth: bool) -> grpc.ServerCredentials:
        def config(b: pki.Bundle) -> Any:
            return grpc.ssl_server_certificate_configuration(
                [(b.key_pem, b.cert_pem + b.ca_pem)], root_certificates=b.ca_pem if client_auth else None)

        served = [self.bundle]

        def fetch() -> Any:  # non-blocking: it runs inside the handshake
            if self.bundle is served[0]:
                return None
            served[0] = self.bundle
            return config(self.bundle)

        return grpc.dynamic_ssl_server_credentials(config(self.bundle), fetch,
                                                   require_client_authentication=client_auth)


def serve(srv: grpc.aio.Server, address: str, identity: Identity, *, client_auth: bool = True,
          slot: CertSlot | None = None) -> int:
    """Bind ``srv`` to ``address`` (``host:port``, ``host:0`` for a free port, or ``unix:///path``);
    returns the port (for a unix socket, whatever nonzero number gRPC gives). With a TLS identity a
    TCP port requires a client certificate from the cluster CA; ``client_auth=False`` is the join
    port's server-only TLS (grpcio cannot make client certificates optional on one port). With a
    ``slot``, the certificate served is the slot's at each handshake (renewal without a restart)."""
    tls = _secure(address, identity)
    try:
        if tls is None:
            port: int = srv.add_insecure_port(target(address))
        else:
            creds = (slot or CertSlot(tls)).credentials(client_auth)
            port = srv.add_secure_port(target(address), creds)
    except RuntimeError as e:
        raise BindError(address, str(e)) from e
    if not port and not address.startswith("unix:"):
        raise BindError(address, "address in use?")
    return port


# --- authorization: one place, every kind of handler --------------------------------------------

@dataclass(frozen=True)
class Caller:
    """Who is calling, from the verified certificate: CN node id, OU role."""

    node_id: str
    role: str
    grant: Any = None  # what a ``vouch`` check found (an agent caller's migration grant: common/grants.py)


# A role whose certificate alone is not enough for the methods it is listed on: the check reads
# what else the call carries (metadata) and returns the Caller with it, or raises PermissionError.
Vouch = Callable[[Caller, str, Mapping[str, bytes]], Caller]


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("dockyard_caller", default=None)


def caller() -> Caller | None:
    """The verified caller of the RPC being served (None on a unix socket or a plaintext server)."""
    return _caller.get()


def _first(ctx: Mapping[str, Any], key: str) -> str:
    got = ctx.get(key) or []
    return got[0].decode() if got else ""


def _subject_parts(subject: str) -> dict[str, str]:
    out = {}
    for part in subject.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip()
    return out


class Authorizer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Deny by default: ``table`` maps a full method name (``/dockyard.cluster.Scheduler/Deploy``) to
    the roles (certificate OUs) that may call it. The caller's O must be the cluster, its CN not
    ``denied``. The verified ``Caller`` is handed to the servicer through ``caller()``. Wraps all
    four kinds of handler, so a streaming method is as guarded as a unary one. ``vouch[role]``, when
    given, must also pass for every call of that role (an agent calling a peer needs a grant)."""

    def __init__(self, table: Mapping[str, frozenset[str]], cluster_id: str,
                 denied: Callable[[str], bool] = lambda node_id: False,
                 vouch: Mapping[str, Vouch] | None = None) -> None:
        self.table = table
        self.cluster_id = cluster_id
        self.denied = denied
        self.vouch = dict(vouch or {})

    def check(self, method: str, context: grpc.aio.ServicerContext) -> Caller:
        auth = context.auth_context()
        subject = _subject_parts(_first(auth, "x509_subject"))
        who = Caller(_first(auth, "x509_common_name"), subject.get("OU", ""))
        if not who.node_id:
            raise PermissionError("no verified client certificate")
        if subject.get("O", "") != self.cluster_id:
            raise PermissionError(f"certificate of {who.node_id} is not of this cluster")
        if self.denied(who.node_id):
            raise PermissionError(f"node {who.node_id} was removed from the cluster")
        roles = self.table.get(method)
        if roles is None or who.role not in roles:
            raise PermissionError(f"{who.role or 'no role'} {who.node_id} may not call {method.rsplit('/', 1)[-1]}")
        vouch = self.vouch.get(who.role)
        if vouch is not None:
            metadata = {k: v for k, v in (context.invocation_metadata() or ())}
            who = vouch(who, method, metadata)
        return who

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        check = self.check

        async def _deny(context: grpc.aio.ServicerContext, e: PermissionError) -> None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def once(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    who = check(method, context)
                except PermissionError as e:
                    await _deny(context, e)
                token = _caller.set(who)
                try:
                    result = inner(request, context)
                    return await result if inspect.isawaitable(result) else result
                finally:
                    _caller.reset(token)

            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            return make(once, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                who = check(method, context)
            except PermissionError as e:
                await _deny(context, e)
            token = _caller.set(who)
            try:
                result = inner_stream(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):  # a servicer that writes with context.write
                    await result
            finally:
                _caller.reset(token)

        make_s = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return make_s(streaming, request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)
