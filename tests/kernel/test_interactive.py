"""-it through a real pty: the CLI runs on a terminal we hold, as a person's would be."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time

import pytest

from tests.agent_harness import CLI, REPO, AgentProcess, _env

pytestmark = pytest.mark.root


class Terminal:
    """The CLI on the slave side of a pty; we type on the master and read the screen."""

    def __init__(self, a: AgentProcess, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen([*CLI, "-H", a.host, *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=_env(), cwd=REPO, start_new_session=True)
        os.close(slave)
        self.screen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, needle: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.screen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; screen was {self.screen[-500:]!r}")
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    self.screen += os.read(self.master, 4096)
                except OSError:
                    break
        return self.screen.decode(errors="replace")

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.killpg(self.proc.pid, 28)  # SIGWINCH, as the terminal emulator would send it

    def wait(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            r, _, _ = select.select([self.master], [], [], 0.1)
            if r:
                try:
                    self.screen += os.read(self.master, 4096)
                except OSError:
                    pass
        code = self.proc.wait(timeout=1)
        os.close(self.master)
        return code


def test_run_it_shell(clean_agent: AgentProcess) -> None:
    t = Terminal(clean_agent, "run", "-it", "--rm", "busybox", "sh", rows=30, cols=100)
    t.expect("# ")
    t.type("echo $((6*7)); tty; stty size\n")
    screen = t.expect("30 100")
    assert "42" in screen and "/dev/pts/0" in screen
    t.resize(40, 120)
    time.sleep(0.3)
    t.type("stty size\n")
    t.expect("40 120")
    t.type("sleep 30\n")
    time.sleep(0.5)
    t.type("\x03")  # Ctrl-C reaches the foreground process through the pty, not the CLI
    t.expect("# ", timeout=10)
    t.type("exit 3\n")
    assert t.wait() == 3


def test_exec_it(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("busybox", "sleep", "60")
    t = Terminal(clean_agent, "exec", "-it", cid, "sh")
    t.expect("# ")
    t.type("echo in-$((1+1)); tty\n")
    screen = t.expect("/dev/pts/")
    assert "in-2" in screen
    t.type("exit 4\n")
    assert t.wait() == 4


def test_attach_and_detach(clean_agent: AgentProcess) -> None:
    cid = clean_agent.run_detached("-it", "busybox", "sh")
    t = Terminal(clean_agent, "attach", cid)
    t.type("echo attached-$((2+3))\n")
    t.expect("attached-5")
    t.type("\x10\x11")  # Ctrl-P Ctrl-Q detaches and leaves the container running
    assert t.wait() == 0
    assert clean_agent.inspect(cid)["State"]["Running"]
