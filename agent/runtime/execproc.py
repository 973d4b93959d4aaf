"""exec: a new process inside a running container, in all of its namespaces and its cgroup.

Runs in a process forked by the zygote. It opens the container init's namespace files and its
cgroup.procs files while it still sees the host, enters the namespaces (mnt last: it changes the
root), then forks, because a pid namespace only applies to children. The child writes itself
into the cgroup, takes its stdio, and execs; the parent reports the child's pid, waits for it and
reports the exit code on the reply socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import NoReturn

from agent.runtime import cgroups, init, messages, process
from agent.runtime import syscalls as sc

# setns order: the user namespace first (it owns the others), mnt last (it moves our root).
_ORDER = ["user", "ipc", "uts", "net", "pid", "cgroup", "mnt"]


def run(req: messages.Exec, reply: socket.socket, stdio: list[int]) -> NoReturn:
    pid = req.pid
    spec = req.process
    own = {ns: os.stat(f"/proc/self/ns/{ns}").st_ino for ns in _ORDER if os.path.exists(f"/proc/self/ns/{ns}")}
    nsfds: list[tuple[str, int]] = []
    for ns in _ORDER:
        path = f"/proc/{pid}/ns/{ns}"
        if ns in own and os.stat(path).st_ino != own[ns]:  # only the ones the container has of its own
            nsfds.append((ns, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
    procs: list[int] = []
    cg = req.cgroup
    if cg is not None:
        driver = cgroups.detect(cg.root, cg.parent)
        for d in set(driver.paths(cg.name).values()):
            with contextlib.suppress(OSError):
                procs.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
    for ns, fd in nsfds:
        sc.setns(fd, sc.NAMESPACE_FLAGS[ns])
        os.close(fd)
    os.chdir("/")
    slave = -1
    if spec.tty:
        master, slave = init._open_pty()
        messages.send(reply, messages.Pty(), [master])
        os.close(master)
    child = os.fork()
    if child == 0:
        try:
            for fd in procs:
                os.write(fd, b"0")
                os.close(fd)
            os.setsid()
            if slave >= 0:
                init._take_terminal(slave)
            else:
                for target, fd in enumerate(stdio[:3]):
                    os.dup2(fd, target)
            prepared = process.prepare(spec, os.uname().nodename)
            process.become(spec, prepared)
            process.execute(prepared)
        except process.ProcessSetupError as e:
            with contextlib.suppress(OSError):
                messages.send(reply, messages.Error(str(e), e.exit_code))
            os._exit(e.exit_code)
        except BaseException as e:
            with contextlib.suppress(OSError):
                messages.send(reply, messages.Error(f"exec failed: {e}", 126))
            os._exit(126)
        os._exit(127)
    for fd in [*procs, *stdio]:
        os.close(fd)
    if slave >= 0:
        os.close(slave)
    messages.send(reply, messages.Started(child))
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    with contextlib.suppress(OSError):
        messages.send(reply, messages.Exit(code))
    os._exit(0)
