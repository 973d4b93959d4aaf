"""Post-copy migration with CRIU's lazy pages: the tree runs on the target before its memory is there.

    source  `criu dump --lazy-pages --address A --port P` freezes the tree and writes every image
            but the memory pages, which stay in pipes inside criu ("ready"). It then serves those
            pages on A:P to one lazy-pages daemon. It exits 0 once the daemon has taken them all,
            and kills the tree, as a plain dump would. It exits non-zero when that connection fails,
            after unfreezing the tree and unlocking its network: the tree runs on as if never dumped.
    target  `criu lazy-pages --page-server --address A --port P` starts first, in the images dir;
            `criu restore --lazy-pages` hands it the restored tree's userfaultfds and returns at
            once. The daemon fills pages as the tree faults on them and pulls the rest in the
            background. It exits 0 when it has them all.

If the daemon dies before it has every page, the kernel drops the userfaultfds and the missing
pages read as zeros: the restored tree would run on with wrong memory. So the daemon runs under
a watchdog (a shell, so that it does not depend on the agent living) that SIGKILLs the restored
tree when the daemon fails; the source, whose dump then fails too, runs on instead.

Over TLS (an agent with a cluster certificate, ``tls_dir`` = <root>/tls) both ends run with
``criu --tls`` and the node's CA, certificate and key, so the pages cross encrypted and only a
holder of a cluster certificate can connect. The source is the TLS server and cannot name-check its
client (criu checks a client against the server's own --address), so it runs ``--tls-no-cn-verify``;
the target checks the source's certificate against the page server's address, which the source's
certificate carries as an IP SAN (given at join). A criu built without GnuTLS silently ignores
``--tls``, so ``tls_works`` proves it with a real handshake before post-copy is offered.

Why pipe-max-size: the dump's page server copies pages through a pipe it sizes to criu's
PIPE_MAX_SIZE (819 pages, rounded to 4 MiB) and ignores the failure. Without CAP_SYS_RESOURCE, a
pipe above /proc/sys/fs/pipe-max-size (1 MiB by default) is refused with EPERM, the pipe stays at
64 KiB and the sink for skipped pages is never opened, so serving fails with "page-pipe: tee: 65536"
or "page-pipe: splice: Bad file descriptor" (it splices into fd 0). Root on most hosts has
CAP_SYS_RESOURCE; where it lacks it (this machine's sandbox), the agent raises pipe-max-size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.checkpoint.criu import Criu, CriuError, _common_args, _first_error, _tail

log = logging.getLogger("dockyard.agent.lazy")

PIPE_MAX_SIZE_SYSCTL = "/proc/sys/fs/pipe-max-size"
# criu's PIPE_MAX_SIZE: 8 pages of struct pipe_buffer (40 bytes) = 819 pages, which the kernel
# rounds up to a power of two pages.
LAZY_PIPE_BYTES = 4 << 20
CAP_SYS_RESOURCE = 24

# Kills the restored tree (its pid is in the restore's pidfile, which is removed before the daemon
# starts, so it names this restore's tree) when the lazy-pages daemon fails. Arguments: the pidfile,
# then the daemon's command line.
_WATCHDOG = r"""
pidfile=$1; shift
"$@"; rc=$?
if [ "$rc" -ne 0 ] && [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill -9 "$pid" 2>/dev/null
fi
exit "$rc"
"""


def has_cap_sys_resource(status: str | None = None) -> bool:
    if status is None:
        status = Path("/proc/self/status").read_text()
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def pipes_ready(raise_limit: bool = True) -> tuple[bool, str]:
    """Can criu's page server size its pipes here? Raises pipe-max-size when it must and may.
    Returns (ok, why not)."""
    if has_cap_sys_resource():
        return True, ""
    try:
        current = int(Path(PIPE_MAX_SIZE_SYSCTL).read_text())
    except (OSError, ValueError) as e:
        return False, f"cannot read {PIPE_MAX_SIZE_SYSCTL}: {e}"
    if current >= LAZY_PIPE_BYTES:
        return True, ""
    if not raise_limit:
        return False, f"{PIPE_MAX_SIZE_SYSCTL} is {current}, lazy pages need {LAZY_PIPE_BYTES} without CAP_SYS_RESOURCE"
    try:
        Path(PIPE_MAX_SIZE_SYSCTL).write_text(str(LAZY_PIPE_BYTES))
    except OSError as e:
        return False, f"no CAP_SYS_RESOURCE and cannot raise {PIPE_MAX_SIZE_SYSCTL} to {LAZY_PIPE_BYTES}: {e}"
    log.info("raised %s from %d to %d for CRIU's lazy-pages server (no CAP_SYS_RESOURCE)",
             PIPE_MAX_SIZE_SYSCTL, current, LAZY_PIPE_BYTES)
    return True, ""


def tls_args(tls_dir: Path | None, *, server: bool, crl_file: Path | None = None) -> list[str]:
    """criu's TLS options for the page server (``server``: the dump side) or its client; with
    ``crl_file`` (the scheduler's CRL of removed nodes) the certificates it lists are refused."""
    if tls_dir is None:
        return []
    from common import pki

    args = ["--tls", "--tls-cacert", str(tls_dir / pki.CA_FILE), "--tls-cert", str(tls_dir / pki.CERT_FILE),
            "--tls-key", str(tls_dir / pki.KEY_FILE)]
    if crl_file is not None:
        args += ["--tls-cacrl", str(crl_file)]
    return args + (["--tls-no-cn-verify"] if server else [])


def tls_works(criu: Criu, tls_dir: Path, timeout: float = 5.0) -> tuple[bool, str]:
    """Does this criu speak TLS? A `criu page-server --tls` on loopback must complete a handshake
    with this node's certificate: a criu without GnuTLS ignores --tls and never answers one."""
    import ssl
    import tempfile

    from common import pki

    with tempfile.TemporaryDirectory(prefix="dockyard-criu-tls-") as work:
        port = free_port("127.0.0.1")
        status_r, status_w = os.pipe()
        proc = subprocess.Popen(
            [criu.path, "page-server", "--address", "127.0.0.1", "--port", str(port), "--images-dir", work,
             "--log-file", f"{work}/ps.log", "-v4", "--status-fd", str(status_w), *tls_args(tls_dir, server=True)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(status_w,))
        os.close(status_w)
        try:
            with os.fdopen(status_r, "rb", buffering=0) as status:
                if not status.read(1):
                    return False, f"criu page-server --tls exited {proc.wait()}: {_first_error(_tail(Path(work) / 'ps.log'))}"
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False  # criu's own address; what is checked here is that it speaks TLS
            ctx.load_verify_locations(str(tls_dir / pki.CA_FILE))
            ctx.load_cert_chain(str(tls_dir / pki.CERT_FILE), str(tls_dir / pki.KEY_FILE))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                        ctx.wrap_socket(raw) as tls:
                    version = tls.version()
            except (OSError, ssl.SSLError) as e:
                return False, f"criu page-server --tls did not complete a TLS handshake ({e}): built without GnuTLS?"
            return True, f"criu page server speaks {version}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def local_address_towards(host: str, port: int) -> str:
    """The address of this host that `host` sees us by (the route's source address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))  # UDP: picks the route, sends nothing
        return str(s.getsockname()[0])


def free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


async def _wait_ready(proc: asyncio.subprocess.Process, status_r: int, what: str, log_file: Path,
                      timeout: float) -> None:
    """criu writes one byte to --status-fd when it is ready; EOF means it exited first."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(status_r, "rb", buffering=0))
    try:
        got = await asyncio.wait_for(reader.read(1), timeout)
    except TimeoutError:
        got = b""
    finally:
        transport.close()
    if got:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
    tail = _tail(log_file)
    raise CriuError(what, _first_error(tail) or f"exited {proc.returncode} before it was ready",
                    returncode=proc.returncode, log_tail=tail)


class LazyDump:
    """A running `criu dump --lazy-pages`: the tree is frozen, its images written, its pages served."""

    def __init__(self, proc: asyncio.subprocess.Process, address: str, port: int, log_file: Path) -> None:
        self.proc = proc
        self.address = address
        self.port = port
        self.log_file = log_file

    @property
    def page_server(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @classmethod
    async def start(cls, criu: Criu, pid: int, images_dir: Path, *, root: str, address: str, port: int,
                    external: Iterable[str] = (), log_file: Path, ready_timeout: float = 120.0,
                    tls_dir: Path | None = None, crl_file: Path | None = None) -> LazyDump:
        """Returns once the images are written (the tree frozen, the page server listening)."""
        ok, why = pipes_ready()
        if not ok:
            raise CriuError("dump --lazy-pages", why)
        images_dir.mkdir(parents=True, exist_ok=True)
        status_r, status_w = os.pipe()
        args = ["dump", "--tree", str(pid), "--images-dir", str(images_dir), "--root", root,
                "--log-file", str(log_file.absolute()), "-v4", "--lazy-pages", "--address", address,
                "--port", str(port), "--status-fd", str(status_w), *tls_args(tls_dir, server=True, crl_file=crl_file)]
        args += _common_args(tcp_established=True, ext_mounts=(), external=external, ext_unix_sk=False,
                             file_locks=True, manage_cgroups=None, work_dir=None)
        # Its own session: the agent's process group may be signalled, the dump must end its own way
        # (unfreezing the tree on failure). No parent-death signal either: if the agent dies after
        # the target connected, the move completes without it; if before, the next agent aborts it.
        proc = await asyncio.create_subprocess_exec(
            criu.path, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, pass_fds=(status_w,), start_new_session=True)
        os.close(status_w)
        await _wait_ready(proc, status_r, "dump --lazy-pages", log_file, ready_timeout)
        return cls(proc, address, port, log_file)

    async def wait(self, timeout: float | None = None) -> None:
        """Until the target has every page (then the tree is gone); CriuError if the transfer failed
        (then criu has unfrozen the tree: it runs on here)."""
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.abort()
            raise CriuError("dump --lazy-pages", f"pages not all taken within {timeout:.0f}s: aborted",
                            log_tail=_tail(self.log_file)) from None
        if rc != 0:
            tail = _tail(self.log_file)
            raise CriuError("dump --lazy-pages", _first_error(tail) or f"exited {rc}", returncode=rc, log_tail=tail)

    async def abort(self, grace: float = 10.0) -> None:
        """End the dump with the tree running here: a torn request makes criu's page server fail,
        and criu then unfreezes the tree and unlocks its network itself. (A SIGKILL would leave the
        network locked.) Harmless if the target is connected already: criu serves one connection."""
        await abort_page_server(self.address, self.port)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            log.warning("criu dump --lazy-pages (pid %d) did not end on abort: killing it", self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def abort_page_server(address: str, port: int) -> None:
    """One byte of a 24-byte request, then EOF: criu's page server fails ("Can't read pagemap from
    socket"). Not an empty connection: criu takes that for a lazy-pages daemon that is done, and
    ends the tree as after a successful transfer."""
    with contextlib.suppress(OSError, TimeoutError):
        _, w = await asyncio.wait_for(asyncio.open_connection(address, port), 5)
        w.write(b"\0")
        await w.drain()
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()


def unlock_network(pid: int) -> None:
    """Remove CRIU's network lock from the netns of `pid` after a failed lazy dump.

    criu decides whether to unlock the network before it serves the lazy pages (cr_dump_finish),
    so when that transfer fails it unfreezes the tree but leaves its DROP rules: the container
    would run on with no network at all. Without the rules this does nothing (restore fails as a
    whole)."""
    from agent.checkpoint.netlock import unlock_pid

    unlock_pid(pid)


class PageDaemon:
    """The target's `criu lazy-pages` for one restore, under a watchdog that kills the restored tree
    (pid from `restore_pidfile`) if the daemon fails."""

    def __init__(self, proc: asyncio.subprocess.Process, log_file: Path) -> None:
        self.proc = proc
        self.log_file = log_file

    @classmethod
    async def start(cls, criu: Criu, images_dir: Path, page_server: str, *, restore_pidfile: Path,
                    log_file: Path, ready_timeout: float = 60.0, tls_dir: Path | None = None) -> PageDaemon:
        host, _, port = page_server.rpartition(":")
        host = host.strip("[]")
        status_r, status_w = os.pipe()
        restore_pidfile.unlink(missing_ok=True)  # a stale pid must never be killed
        args: Sequence[str] = [
            criu.path, "lazy-pages", "--page-server", "--address", host, "--port", port,
            "--images-dir", str(images_dir), "--log-file", str(log_file.absolute()), "-v4",
            "--status-fd", str(status_w), *tls_args(tls_dir, server=False)]
        # A session of its own and no parent-death signal: it must go on (and keep its watchdog)
        # if the agent dies while pages are still coming.
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", _WATCHDOG, "dockyard-lazy-pages", str(restore_pidfile), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, pass_fds=(status_w,), start_new_session=True)
        os.close(status_w)
        await _wait_ready(proc, status_r, "lazy-pages", log_file, ready_timeout)
        return cls(proc, log_file)

    async def wait(self) -> None:
        """Until every page is in; CriuError if the daemon failed (the restored tree was killed)."""
        rc = await self.proc.wait()
        if rc != 0:
            tail = _tail(self.log_file)
            raise CriuError("lazy-pages", _first_error(tail) or f"exited {rc}", returncode=rc, log_tail=tail)

    def stop(self) -> None:
        """The restore failed: the daemon has nothing to serve."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
