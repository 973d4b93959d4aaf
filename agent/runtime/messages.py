"""The messages the agent, the zygote, a shim, a container's init and an exec helper send each other.

Each is a frozen dataclass; `send` and `recv` are the one codec. On the wire a message is one JSON
object per SOCK_SEQPACKET datagram, {"op": <its OP>, <its fields>...}, with file descriptors beside it
(SCM_RIGHTS) where one says so. The monitor (monitor/monitor.c) speaks two of them in C: it sends
Go, and reads the Error an init reports after it: their OPs and fields are fixed.

A receiver names what it may get next (`recv(sock, Ready, Pty, Error)`); anything else, an unknown
op or a field that does not fit, raises ProtocolError naming it, where a dict with a typo used to
surface as a timeout (youki's channel messages are the model).

Who sends what:
  agent -> zygote     Start (+ fds [reply] or [reply, client]), Exec (+ [reply, stdin, stdout, stderr]
                      or [reply] with a tty)
  shim -> agent       Attach (wire the veth into that pid's netns) ... Started | Failed
  agent -> shim       Attached | Error
  shim -> init        InitSpec (+ stdio fds; a precloned init only), Mounted (precloned only),
                      Configure, then Go (from the shim, or the monitor on release)
  init -> shim        Pty (+ the master), Ready | Error
  restore child       Launched | Error (to the shim that forked it)
  exec helper         Pty (+ the master), Started, Error (its child could not exec), Exit
  zygote              Failed, when a request could not even be begun
"""

from __future__ import annotations

import array
import json
import os
import socket
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from agent.runtime.spec import ProcessSpec, RuntimeSpec, dumps


class ProtocolError(Exception):
    """A message that is not one the receiver can take at this point, or is malformed."""


@dataclass(frozen=True)
class Message:
    OP: ClassVar[str] = ""

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Message:
        return cls(**d)


@dataclass(frozen=True)
class CgroupRef:
    """Which cgroup a process joins: the agent's driver (root, parent) and the container's name."""
    root: str
    parent: str | None
    name: str


@dataclass(frozen=True)
class Start(Message):
    OP = "start"
    spec: RuntimeSpec
    dir: str       # the shim's state directory (shim.ShimFiles)
    socket: str    # the socket its monitor serves

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Start:
        return cls(RuntimeSpec.from_dict(d["spec"]), str(d["dir"]), str(d["socket"]))


@dataclass(frozen=True)
class Exec(Message):
    OP = "exec"
    pid: int                    # the container's init: whose namespaces to enter
    process: ProcessSpec
    cgroup: CgroupRef | None = None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Exec:
        cg = d.get("cgroup")
        return cls(int(d["pid"]), ProcessSpec(**d["process"]), CgroupRef(**cg) if cg else None)


@dataclass(frozen=True)
class Attach(Message):
    OP = "attach"
    pid: int


@dataclass(frozen=True)
class Attached(Message):
    OP = "attached"


@dataclass(frozen=True)
class InitSpec(Message):
    OP = "spec"
    spec: RuntimeSpec

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> InitSpec:
        return cls(RuntimeSpec.from_dict(d["spec"]))


@dataclass(frozen=True)
class Mounted(Message):
    OP = "mounted"


@dataclass(frozen=True)
class Configure(Message):
    OP = "configure"
    endpoint: dict[str, Any] | None = None   # a network.Endpoint as a dict (the init's own import)


@dataclass(frozen=True)
class Pty(Message):
    OP = "pty"


@dataclass(frozen=True)
class Ready(Message):
    OP = "ready"


@dataclass(frozen=True)
class Go(Message):
    OP = "go"


@dataclass(frozen=True)
class Launched(Message):
    OP = "launched"
    pid: int


@dataclass(frozen=True)
class Started(Message):
    OP = "started"
    pid: int
    shim_pid: int = 0   # a container's start; 0 for an exec


@dataclass(frozen=True)
class Exit(Message):
    OP = "exit"
    exit_code: int


@dataclass(frozen=True)
class Error(Message):
    """A stage failed; for an exec, the Exit still follows."""
    OP = "error"
    error: str
    exit_code: int = 128


@dataclass(frozen=True)
class Failed(Message):
    """The request as a whole failed: nothing follows."""
    OP = "failed"
    error: str
    exit_code: int = 128


_BY_OP: dict[str, type[Message]] = {c.OP: c for c in (
    Start, Exec, Attach, Attached, InitSpec, Mounted, Configure, Pty, Ready, Go, Launched, Started,
    Exit, Error, Failed)}


def encode(msg: Message) -> bytes:
    wire = {"op": msg.OP}
    for f in fields(msg):
        wire[f.name] = getattr(msg, f.name)
    return dumps(wire).encode()


def decode(data: bytes, *expected: type[Message]) -> Message:
    try:
        wire = json.loads(data)
        op = wire.pop("op")
    except (ValueError, TypeError, AttributeError, KeyError):
        raise ProtocolError(f"not a message: {data[:80]!r}") from None
    cls = _BY_OP.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message {op!r}")
    if expected and cls not in expected:
        raise ProtocolError(f"unexpected message {op!r}; expected {' or '.join(c.OP for c in expected)}")
    try:
        return cls.from_wire(wire)
    except (TypeError, KeyError, ValueError) as e:
        raise ProtocolError(f"malformed message {op!r}: {e}") from None


def send(sock: socket.socket, msg: Message, fds: list[int] | None = None) -> None:
    data = encode(msg)
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def recv_raw(sock: socket.socket, size: int = 1 << 20, max_fds: int = 8) -> tuple[bytes, list[int]]:
    """One datagram, undecoded, and the descriptors that came with it (close-on-exec); b"" at EOF.
    On a non-blocking socket with nothing to read, BlockingIOError propagates."""
    fds = array.array("i")
    data, anc, _flags, _addr = sock.recvmsg(size, socket.CMSG_SPACE(max_fds * fds.itemsize),
                                            socket.MSG_CMSG_CLOEXEC)
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    return data, list(fds)


def recv(sock: socket.socket, *expected: type[Message], size: int = 1 << 20,
         max_fds: int = 8) -> tuple[Message | None, list[int]]:
    """The next message (one of `expected`, when given) and its descriptors; (None, fds) at EOF.
    On a ProtocolError the descriptors are closed."""
    data, fds = recv_raw(sock, size, max_fds)
    if not data:
        return None, fds
    try:
        return decode(data, *expected), fds
    except ProtocolError:
        for fd in fds:
            os.close(fd)
        raise

