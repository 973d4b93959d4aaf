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

import enum
from dataclasses import dataclass

import grpc
import grpc.aio

# Image layers, checkpoint archives and log chunks cross in single messages (gRPC's default is 4 MiB).
MAX_MESSAGE = 64 << 20


class Role(enum.Enum):
    AGENT = "agent"
    SCHEDULER = "scheduler"
    CLI = "cli"


@dataclass(frozen=True)
class Identity:
    """Who this process is toward the peers it dials and the clients it serves."""

    role: Role


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


def dial(address: str, identity: Identity, peer: Role) -> grpc.aio.Channel:
    """An asyncio channel from this process (``identity``) to a ``peer`` at ``address``."""
    return grpc.aio.insecure_channel(target(address), options=channel_options(identity, peer))


def dial_blocking(address: str, identity: Identity, peer: Role) -> grpc.Channel:
    """A synchronous channel, for the CLI and the bootstrap's checks."""
    return grpc.insecure_channel(target(address), options=channel_options(identity, peer))


def server(identity: Identity) -> grpc.aio.Server:
    """An asyncio server for this process; bind it with ``serve``."""
    return grpc.aio.server(options=list(_SERVER_OPTIONS))


def serve(srv: grpc.aio.Server, address: str, identity: Identity) -> int:
    """Bind ``srv`` to ``address`` (``host:port``, ``host:0`` for a free port, or ``unix:///path``);
    returns the port (for a unix socket, whatever nonzero number gRPC gives)."""
    try:
        port: int = srv.add_insecure_port(target(address))
    except RuntimeError as e:
        raise BindError(address, str(e)) from e
    if not port and not address.startswith("unix:"):
        raise BindError(address, "address in use?")
    return port
