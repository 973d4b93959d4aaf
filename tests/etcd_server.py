"""A real etcd for tests and benchmarks: Debian's /usr/bin/etcd on free loopback ports.

Use the fixtures from any suite:

    from tests.etcd_server import etcd, etcd_server  # noqa: F401  (pytest finds them by name)

    @pytest.mark.etcd
    def test_x(etcd: EtcdServer) -> None: ...   # /dockyard/ is empty at the start of each test

or the context manager outside pytest (the benchmark does):

    with EtcdServer.start() as server:
        ... server.host, server.port ...

The data directory is a fresh temporary directory with mode 0700; the server is stopped by its own
PID (SIGTERM, then SIGKILL after a grace period) and the directory removed, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

ETCD = os.environ.get("DOCKYARD_TEST_ETCD", "/usr/bin/etcd")
PREFIX = b"/dockyard/"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EtcdServer:
    host: str
    port: int
    peer_port: int
    data_dir: str
    process: subprocess.Popen[bytes]
    log_path: str

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def start(cls, *, timeout: float = 15.0, extra_args: tuple[str, ...] = ()) -> EtcdServer:
        if not os.access(ETCD, os.X_OK):
            pytest.skip(f"{ETCD} not installed (apt-get install etcd-server)")
        last_error = ""
        for _ in range(3):  # a free port can be taken between probing and binding: try again
            data_dir = tempfile.mkdtemp(prefix="dockyard-etcd-")
            os.chmod(data_dir, 0o700)
            port, peer = free_port(), free_port()
            log_path = os.path.join(data_dir, "etcd.log")
            args = [
                ETCD, "--logger=zap", "--log-level=warn", "--name", "n1",
                "--data-dir", os.path.join(data_dir, "data"),
                "--listen-client-urls", f"http://127.0.0.1:{port}",
                "--advertise-client-urls", f"http://127.0.0.1:{port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"n1=http://127.0.0.1:{peer}",
                *extra_args,
            ]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            server = cls("127.0.0.1", port, peer, data_dir, proc, log_path)
            if server._wait_ready(timeout):
                return server
            last_error = server._log_tail()
            server.stop()
        raise RuntimeError(f"etcd did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
                    if b'"health":"true"' in r.read():
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def wipe(self, prefix: bytes = PREFIX) -> None:
        """Delete every key under `prefix`, through etcd's own client API (not the data dir)."""
        import asyncio

        import aetcd

        async def _wipe() -> None:
            async with aetcd.Client(host=self.host, port=self.port) as client:
                await client.delete_prefix(prefix)

        asyncio.run(_wipe())

    def range(self, prefix: str | bytes) -> list[tuple[bytes, bytes]]:
        """(key, value) of every key under `prefix`, through etcd's client API."""
        import asyncio

        import aetcd

        raw = prefix.encode() if isinstance(prefix, str) else prefix

        async def _range() -> list[tuple[bytes, bytes]]:
            async with aetcd.Client(host=self.host, port=self.port) as client:
                got = await client.get_prefix(raw)
                return [(bytes(kv.key), bytes(kv.value)) for kv in got]

        return asyncio.run(_range())

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class EtcdCluster:
    """`size` etcd members on free loopback ports, one raft cluster (a random token): members[i]
    is an EtcdServer; kill9(i) ends one by its PID; stop() ends every member and removes its data."""

    def __init__(self, size: int = 3) -> None:
        self.members: list[EtcdServer] = []
        self.size = size

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        if not os.access(ETCD, os.X_OK):
            pytest.skip(f"{ETCD} not installed (apt-get install etcd-server)")
        names = [f"m{i}" for i in range(1, self.size + 1)]
        ports = [(free_port(), free_port()) for _ in names]
        initial = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, (_, peer) in zip(names, ports, strict=True))
        token = f"dockyard-test-{os.urandom(4).hex()}"
        try:
            for name, (port, peer) in zip(names, ports, strict=True):
                data_dir = tempfile.mkdtemp(prefix=f"dockyard-etcd-{name}-")
                os.chmod(data_dir, 0o700)
                log_path = os.path.join(data_dir, "etcd.log")
                args = [
                    ETCD, "--logger=zap", "--log-level=warn", "--name", name,
                    "--data-dir", os.path.join(data_dir, "data"),
                    "--listen-client-urls", f"http://127.0.0.1:{port}",
                    "--advertise-client-urls", f"http://127.0.0.1:{port}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", initial, "--initial-cluster-token", token,
                    "--initial-cluster-state", "new",
                ]
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
                self.members.append(EtcdServer("127.0.0.1", port, peer, data_dir, proc, log_path))
            for m in self.members:  # each member is healthy once a quorum has formed
                if not m._wait_ready(timeout):
                    raise RuntimeError(f"etcd member {m.endpoint} did not start: {m._log_tail()}")
        except BaseException:
            self.stop()
            raise
        return self

    def kill9(self, i: int) -> None:
        p = self.members[i].process
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)

    def leader(self) -> int:
        """The index of the raft leader among the live members (etcd's maintenance status)."""
        import json

        ids: dict[int, int] = {}
        leader = 0
        for i, m in enumerate(self.members):
            if m.process.poll() is not None:
                continue
            req = urllib.request.Request(f"{m.endpoint}/v3/maintenance/status", data=b"{}", method="POST")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(req, timeout=2) as r:
                    st = json.loads(r.read())
                ids[int(st["header"]["member_id"])] = i
                leader = int(st["leader"])
        if leader not in ids:
            raise RuntimeError("no etcd member names a live leader")
        return ids[leader]

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def running_etcd(**kwargs: Any) -> Iterator[EtcdServer]:
    server = EtcdServer.start(**kwargs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd for the whole session."""
    with running_etcd() as server:
        yield server


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> Iterator[EtcdServer]:
    """The session's etcd with /dockyard/ empty at the start of the test."""
    if etcd_server.process.poll() is not None:
        pytest.fail(f"etcd exited: {etcd_server._log_tail()}")
    etcd_server.wipe()
    yield etcd_server
