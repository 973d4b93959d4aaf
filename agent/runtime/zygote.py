"""The zygote: a single-threaded fork server the agent starts beside itself.

The agent is an asyncio gRPC server with threads, which must never fork or unshare (STYLE.md).
The zygote has imported the runtime and frozen its heap (gc.freeze), so each child it forks shares
most of its memory pages with the others. It keeps one child forked ahead of the next request.

Protocol, on a SOCK_SEQPACKET pair: the agent sends one request (agent/runtime/messages.py) with
file descriptors (SCM_RIGHTS); the first descriptor is a fresh socket for that request's replies,
so requests run concurrently. The request is read by a child the zygote forked ahead of it
(_fork_spare).

  Start + fds [reply] or [reply, client] (a socket the monitor serves as an attached client)
        -> Started | Failed (before it, with a bridge network: Attach, answered by the agent with
        Attached or Error once the veth is in that pid's namespace)
  Exec + fds [reply, stdin, stdout, stderr] (or [reply] with a tty) -> [Pty] Started ... Exit
  anything else -> Failed, naming it
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
from typing import NoReturn

from agent.runtime import execproc, init, messages, shim
from agent.runtime import syscalls as sc
from agent.runtime.spec import ProcessSpec


def _handle(data: bytes, fds: list[int], pre: shim.Precloned | None = None) -> NoReturn:
    reply = socket.socket(fileno=fds[0])
    try:
        req = messages.decode(data, messages.Start, messages.Exec)
        if not isinstance(req, messages.Start) and pre is not None:
            pre.discard()
        if isinstance(req, messages.Start):
            shim.trace("zygote: forked")
            # The shim is our child (we reap it); its own session keeps it clear of the agent's
            # signals. If the agent dies we die too, and shims are adopted by init.
            os.setsid()
            spec = req.spec
            files = shim.ShimFiles(req.dir, req.socket)
            devnull = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            shim.start(spec, files, reply, pre, clients=fds[1:])
        elif isinstance(req, messages.Exec):
            execproc.run(req, reply, fds[1:])
        raise AssertionError("unreachable: decode admits only Start and Exec")
    except BaseException as e:
        with contextlib.suppress(OSError):
            messages.send(reply, messages.Failed(f"{type(e).__name__}: {e}", 128))
        os._exit(1)


def _reap() -> None:
    while True:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if done == 0:
            return


def _fork_spare(sock: socket.socket) -> socket.socket:
    """A child forked ahead of need that takes the next request off the agent's socket itself:
    forking this 23 MB process takes about 2 ms here, and a container start should wait neither for
    that nor for a hand-over (Android's zygote keeps such a pool, its USAP). It also clones the
    next container's init ahead (shim.Precloned). It tells us on the pair whose end we get back:
    b"t" when it has taken a request, b"e" when the agent has gone."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        pre: shim.Precloned | None = None
        if not select.select([sock], [], [], 0)[0]:  # (a request waiting is served first)
            with contextlib.suppress(OSError):
                # (the agent's one cgroup driver, when the zygote was given it: its cgroups too)
                pre = shim.Precloned(next(iter(shim.DETECTED.values()), None))
        while True:
            try:
                data, fds = messages.recv_raw(sock)
                break
            except InterruptedError:
                continue
        sock.close()
        if not data:
            if pre is not None:
                pre.discard()
            theirs.send(b"e")
            os._exit(0)
        theirs.send(b"t")
        theirs.close()
        _handle(data, fds, pre)
    theirs.close()
    return ours


def serve(sock: socket.socket) -> NoReturn:
    sc.set_pdeathsig(signal.SIGKILL)  # an agent that dies takes its zygote, never its shims
    # Shims and exec workers are our children, and so is whatever they orphan: we reap them all
    # (this host's pid 1 does not reap orphans).
    sc.set_child_subreaper()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    gc.collect()
    gc.freeze()
    # We never read the agent's socket ourselves: there is always one spare reading it.
    spare = _fork_spare(sock)
    while True:
        ready, _, _ = select.select([spare], [], [], 0.5)
        _reap()
        if not ready:
            continue
        try:
            said = spare.recv(1)
        except InterruptedError:
            continue
        except OSError:
            said = b""
        if said == b"e":  # the agent has gone
            os._exit(0)
        spare.close()  # it took a request (b"t"), or died (b""): the next one reads from now on
        spare = _fork_spare(sock)


def main() -> None:
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    # Pre-import what children will need so forks share it.
    # (seccomp compiles the containers' filter once, here.)
    # Not pyroute2 (13 MB here, 0.2 s to import): the agent wires containers' veths (shim.py
    # _ask_attach), and a zygote a third smaller is a third cheaper to fork, and its children
    # to exec and to exit.
    from agent.runtime import cgroups, network, process, rootfs, seccomp  # noqa: F401

    if os.environ.get("DOCKYARD_ZYGOTE_CGROUPS"):
        # Detected once here, for every shim to share (2 ms of each start, in a fresh child).
        root, parent = json.loads(os.environ["DOCKYARD_ZYGOTE_CGROUPS"])
        shim.DETECTED[(root, parent)] = cgroups.detect(root, parent)
    _ = (init, ProcessSpec)
    serve(sock)


if __name__ == "__main__":
    main()
