"""The agent's CRIU wrapper: find a working criu, probe what it can do, dump and restore a process tree.

This module knows nothing about containers. The runtime calls it with the container init's host pid
and the container's rootfs; what CRIU demands of that process (found by trying, see FACTS.md):
  - the init calls setsid inside its pid namespace (no controlling terminal from outside);
  - it has pivot_root'ed into its rootfs and holds no fds on paths outside it; outside files are
    passed as external/inherited fds (`external=`, `inherit_fds=`);
  - restore needs `root=` (the rootfs, mounted the same way as at dump time);
  - nothing outside the container writes to files it has open between dump and restore.

criu is always run with an argument list and its own log file; a failure raises CriuError with the
tail of that log, since criu's exit status alone says nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Where deploy/install-criu.sh puts Debian 13's criu when the system has no criu >= 4.
PRIVATE_CRIU = "/opt/dockyard/criu/bin/criu"
ENV_OVERRIDE = "DOCKYARD_CRIU"
MIN_VERSION = (4, 0)
# Linux 6.16 restricted SO_PASSCRED/SO_PASSSEC to unix and netlink sockets; criu < 4.2 then fails to
# dump any inet socket ("Can't get 1:16 opt: Operation not supported", checkpoint-restore/criu#2705).
INET_SOCKETS_KERNEL = (6, 16)
INET_SOCKETS_CRIU = (4, 2)

# Features probed with `criu check --feature NAME` (each exits 0 when supported).
#   uffd, uffd-noncoop: post-copy migration with lazy pages;
#   mem_dirty_track:    soft-dirty bits, needed by pre-dump / iterative pre-copy;
#   timens, external_net_ns, clone3_set_tid: restoring into a fresh container cleanly.
PROBED_FEATURES = ("uffd", "uffd-noncoop", "mem_dirty_track", "timens", "external_net_ns", "clone3_set_tid")

_LOG_TAIL_LINES = 25
# Printed on every run by criu 4 on this kernel and harmless (FACTS.md): not worth showing.
_NOISE = ("rlimit: Can't setup RLIMIT_NOFILE",)


class CriuError(Exception):
    """criu failed; `log_tail` holds the last lines of its log, which say why."""

    def __init__(
        self, operation: str, message: str, *, returncode: int | None = None, log_tail: str = ""
    ) -> None:
        self.operation = operation
        self.returncode = returncode
        self.log_tail = log_tail
        text = f"criu {operation}: {message}"
        if log_tail:
            text += "\n" + log_tail
        super().__init__(text)


@dataclass(frozen=True)
class CriuCapabilities:
    """What this host's criu can do: `works` is `criu check` passing; `reason` says why not."""

    works: bool
    reason: str
    version: str = ""
    features: Mapping[str, bool] = field(default_factory=dict)

    @property
    def uffd(self) -> bool:
        return self.features.get("uffd", False)

    @property
    def lazy_pages(self) -> bool:
        """Post-copy: restore first, fault memory in from the source's page server."""
        return self.works and self.features.get("uffd", False) and self.features.get("uffd-noncoop", False)

    @property
    def inet_sockets(self) -> bool:
        """Can dump TCP/UDP sockets on this kernel (not derived from a probe: see needed_version)."""
        return self.works and self.features.get("inet_sockets", False)

    @property
    def mem_dirty_track(self) -> bool:
        """Pre-copy (criu pre-dump) needs soft-dirty tracking."""
        return self.works and self.features.get("mem_dirty_track", False)


def parse_version(text: str) -> tuple[int, ...] | None:
    """`criu --version` prints "Version: 4.1.1" (older ones "criu version 3.17.1")."""
    m = re.search(r"[Vv]ersion:?\s+(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def _leading_ints(text: str) -> tuple[int, ...]:
    m = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def needed_version(kernel_release: str | None = None) -> tuple[int, ...]:
    """The oldest criu that can dump a networked container on this kernel."""
    kernel = _leading_ints(kernel_release if kernel_release is not None else os.uname().release)
    return INET_SOCKETS_CRIU if kernel >= INET_SOCKETS_KERNEL else MIN_VERSION


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if not any(n in line for n in _NOISE)]
    return "\n".join(kept[-lines:])


class Criu:
    """One criu executable (a path, or a wrapper script around a private prefix)."""

    def __init__(self, path: str, *, timeout: float = 600.0) -> None:
        self.path = path
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Criu({self.path!r})"

    @property
    def bin_dir(self) -> str:
        """Put this first on PATH for tools that look criu up by name (runc, podman)."""
        return os.path.dirname(os.path.abspath(self.path))

    def _run(
        self, args: Sequence[str], *, timeout: float | None = None, pass_fds: Sequence[int] = ()
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path, *args],
            capture_output=True,
            text=True,
            timeout=self.timeout if timeout is None else timeout,
            pass_fds=tuple(pass_fds),
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def version(self) -> tuple[int, ...]:
        try:
            proc = self._run(["--version"], timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CriuError("--version", str(e)) from e
        v = parse_version(proc.stdout + proc.stderr)
        if proc.returncode != 0 or v is None:
            raise CriuError(
                "--version",
                "cannot run or parse",
                returncode=proc.returncode,
                log_tail=(proc.stdout + proc.stderr).strip()[-2000:],
            )
        return v

    def check(self, features: Iterable[str] = PROBED_FEATURES) -> CriuCapabilities:
        """`criu check` plus one `criu check --feature` per feature. Never raises."""
        try:
            v = self.version()
        except CriuError as e:
            return CriuCapabilities(False, str(e))
        version = ".".join(map(str, v))
        try:
            proc = self._run(["check"], timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return CriuCapabilities(False, f"criu check: {e}", version)
        out = proc.stdout + proc.stderr
        works = proc.returncode == 0 and "Looks good" in out
        reason = "Looks good." if works else _first_error(out) or f"criu check exited {proc.returncode}"
        found: dict[str, bool] = {}
        for name in features:
            try:
                found[name] = self._run(["check", "--feature", name], timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                found[name] = False
        found["inet_sockets"] = v >= needed_version()
        if works and not found["inet_sockets"]:
            reason = f"Looks good, but criu {version} cannot dump inet sockets on Linux {os.uname().release}"
        return CriuCapabilities(works, reason, version, found)

    def dump(
        self,
        pid: int,
        images_dir: str | os.PathLike[str],
        *,
        root: str,
        leave_running: bool = False,
        tcp_established: bool = False,
        ext_mounts: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        external: Iterable[str] = (),
        ext_unix_sk: bool = False,
        file_locks: bool = False,
        manage_cgroups: str | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        timeout: float | None = None,
    ) -> float:
        """Dump the process tree rooted at host pid `pid` into `images_dir`; returns seconds taken.

        Without leave_running the tree is gone when this returns. `ext_mounts` maps a mount
        point inside the container to a key (the same key is mapped to a host path on restore);
        `external` takes criu's --external specs as is (e.g. "net[4026532]:netns").
        """
        images = Path(images_dir)
        images.mkdir(parents=True, exist_ok=True)
        log = Path(log_file) if log_file is not None else images / "dump.log"
        args = [
            "dump",
            "--tree",
            str(pid),
            "--images-dir",
            str(images),
            "--root",
            root,
            "--log-file",
            str(log.absolute()),
            "-v4",
        ]
        args += _common_args(
            tcp_established, ext_mounts, external, ext_unix_sk, file_locks, manage_cgroups, work_dir
        )
        if leave_running:
            args.append("--leave-running")
        args += extra_args
        return self._invoke("dump", args, log, timeout=timeout)

    def restore(
        self,
        images_dir: str | os.PathLike[str],
        *,
        root: str,
        pidfile: str | os.PathLike[str] | None = None,
        inherit_fds: Iterable[tuple[int, str]] = (),
        tcp_established: bool = False,
        ext_mounts: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        external: Iterable[str] = (),
        ext_unix_sk: bool = False,
        file_locks: bool = False,
        manage_cgroups: str | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        timeout: float | None = None,
    ) -> int:
        """Restore the tree dumped in `images_dir` under rootfs `root`; returns the new host pid.

        Always detached (--restore-detached): criu exits once the tree runs, and the restored
        init is re-parented to the caller's nearest child subreaper (the agent should be one so it
        can reap it). `inherit_fds` are (fd, key) pairs: the caller's fd `fd` stands in for the
        resource dumped as external `key` (a netns, a log pipe, an outside file); `ext_mounts` maps a
        dump-time key to the host path to mount there.
        """
        images = Path(images_dir)
        log = Path(log_file) if log_file is not None else images / "restore.log"
        pid_path = Path(pidfile) if pidfile is not None else images / "restore.pid"
        pid_path = pid_path.absolute()
        pid_path.unlink(missing_ok=True)
        fds = list(inherit_fds)
        args = [
            "restore",
            "--images-dir",
            str(images),
            "--root",
            root,
            "--restore-detached",
            "--pidfile",
            str(pid_path),
            "--log-file",
            str(log.absolute()),
            "-v4",
        ]
        args += _common_args(
            tcp_established, ext_mounts, external, ext_unix_sk, file_locks, manage_cgroups, work_dir
        )
        for fd, key in fds:
            args += ["--inherit-fd", f"fd[{fd}]:{key}"]
        args += extra_args
        self._invoke("restore", args, log, timeout=timeout, pass_fds=[fd for fd, _ in fds])
        try:
            return int(pid_path.read_text().strip())
        except (OSError, ValueError) as e:
            raise CriuError("restore", f"no pid in {pid_path}: {e}", log_tail=_tail(log)) from e

    def _invoke(
        self,
        operation: str,
        args: list[str],
        log: Path,
        *,
        timeout: float | None,
        pass_fds: Sequence[int] = (),
    ) -> float:
        start = time.monotonic()
        try:
            proc = self._run(args, timeout=timeout, pass_fds=pass_fds)
        except subprocess.TimeoutExpired as e:
            raise CriuError(operation, f"timed out after {e.timeout:.0f}s", log_tail=_tail(log)) from e
        except OSError as e:
            raise CriuError(operation, f"cannot run {self.path}: {e}") from e
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            tail = _tail(log) or (proc.stdout + proc.stderr).strip()[-3000:]
            reason = _first_error(tail) or f"exited {proc.returncode}"
            raise CriuError(operation, reason, returncode=proc.returncode, log_tail=tail)
        return elapsed


def _common_args(
    tcp_established: bool,
    ext_mounts: Mapping[str, str] | Iterable[tuple[str, str]],
    external: Iterable[str],
    ext_unix_sk: bool,
    file_locks: bool,
    manage_cgroups: str | None,
    work_dir: str | os.PathLike[str] | None,
) -> list[str]:
    args: list[str] = []
    if tcp_established:
        args.append("--tcp-established")
    if ext_unix_sk:
        args.append("--ext-unix-sk")
    if file_locks:
        args.append("--file-locks")
    if manage_cgroups is not None:
        args.append(f"--manage-cgroups={manage_cgroups}")
    pairs = ext_mounts.items() if isinstance(ext_mounts, Mapping) else ext_mounts
    for a, b in pairs:
        args += ["--ext-mount-map", f"{a}:{b}"]
    for spec in external:
        args += ["--external", spec]
    if work_dir is not None:
        args += ["--work-dir", str(work_dir)]
    return args


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if ("Error" in line or "error" in line) and not any(n in line for n in _NOISE):
            return line.strip()
    return ""


def _version_of(path: str) -> tuple[int, ...]:
    try:
        return Criu(path).version()
    except CriuError:
        return ()


def find_criu(env: Mapping[str, str] | None = None, kernel_release: str | None = None) -> Criu | None:
    """The criu to use: $DOCKYARD_CRIU if set (and nothing else), else a system criu >= 4, else the
    private one deploy/install-criu.sh installs; one new enough for this kernel's sockets
    (needed_version) is preferred over an older one. None when there is no criu >= 4."""
    env = os.environ if env is None else env
    override = env.get(ENV_OVERRIDE)
    if override:
        return Criu(override) if _version_of(override) >= MIN_VERSION else None
    candidates = []
    system = shutil.which("criu", path=env.get("PATH", os.defpath))
    if system and os.path.realpath(system) != os.path.realpath(PRIVATE_CRIU):
        candidates.append(system)
    if os.access(PRIVATE_CRIU, os.X_OK):
        candidates.append(PRIVATE_CRIU)
    versions = {path: _version_of(path) for path in candidates}
    for floor in (needed_version(kernel_release), MIN_VERSION):
        for path in candidates:
            if versions[path] >= floor:
                return Criu(path)
    return None
