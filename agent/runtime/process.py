"""The last steps before a container's command runs: user, capabilities, environment, execve.

Used by the container init and by exec alike, after they have entered the container's root.
Errors here are the user's errors ("unable to find user app", "executable file not found in
$PATH"), so they are raised as ProcessSetupError with docker's wording and exit code.
"""

from __future__ import annotations

import base64
import os
import resource as resource_mod
import signal
from dataclasses import dataclass

from agent.runtime import syscalls as sc
from agent.runtime.spec import CAPABILITY_NUMBERS, DEFAULT_PATH, ProcessSpec


class ProcessSetupError(Exception):
    def __init__(self, message: str, exit_code: int = 127) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Identity:
    uid: int
    gid: int
    groups: list[int]
    home: str


def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(user: str) -> Identity:
    """docker's -u: name, uid, name:group, uid:gid, looked up in the container's own /etc files."""
    name, _, group = user.partition(":")
    passwd = _read_db("/etc/passwd")
    uid, gid, home = 0, 0, "/root"
    if name:
        entry = next((e for e in passwd if len(e) >= 6 and (e[0] == name or e[2] == name)), None)
        if entry is not None:
            uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
        elif name.isdigit():
            uid, gid, home = int(name), int(name) if not group else 0, "/"
        else:
            raise ProcessSetupError(f"unable to find user {name}: no matching entries in passwd file", 126)
    groups_db = _read_db("/etc/group")
    if group:
        g = next((e for e in groups_db if len(e) >= 3 and (e[0] == group or e[2] == group)), None)
        if g is not None:
            gid = int(g[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise ProcessSetupError(f"unable to find group {group}: no matching entries in group file", 126)
    uname = next((e[0] for e in passwd if len(e) >= 3 and e[2] == str(uid)), None)
    extra = sorted({int(e[2]) for e in groups_db if len(e) >= 4 and uname and uname in e[3].split(",")})
    return Identity(uid, gid, [gid, *[g for g in extra if g != gid]], home)


def build_env(spec: ProcessSpec, ident: Identity, hostname: str) -> dict[str, str]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    if spec.tty:
        env["TERM"] = "xterm"
    for item in spec.env:
        k, sep, v = item.partition("=")
        if sep:
            env[k] = v
    env.setdefault("HOME", ident.home or "/")
    return env


def find_executable(cmd: str, path: str) -> str:
    if "/" in cmd:
        if not os.path.exists(cmd):
            raise ProcessSetupError(f'exec: "{cmd}": stat {cmd}: no such file or directory')
        if os.path.isdir(cmd) or not os.access(cmd, os.X_OK):
            raise ProcessSetupError(f'exec: "{cmd}": permission denied', 126)
        return cmd
    for d in path.split(":"):
        cand = os.path.join(d or ".", cmd)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise ProcessSetupError(f'exec: "{cmd}": executable file not found in $PATH')


@dataclass
class Prepared:
    path: str
    args: list[str]
    env: dict[str, str]
    ident: Identity


def _add_groups(ident: Identity, groups: list[str]) -> None:
    """--group-add: names from the container's /etc/group, or numbers."""
    db = _read_db("/etc/group")
    for g in groups:
        entry = next((e for e in db if len(e) >= 3 and e[0] == g), None)
        if entry is not None:
            gid = int(entry[2])
        elif g.isdigit():
            gid = int(g)
        else:
            raise ProcessSetupError(f"unable to find group {g}: no matching entries in group file", 126)
        if gid not in ident.groups:
            ident.groups.append(gid)


def prepare(spec: ProcessSpec, hostname: str) -> Prepared:
    """Resolve everything that can fail with a user error, before anything irreversible."""
    if not spec.args:
        raise ProcessSetupError("no command specified", 126)
    ident = resolve_user(spec.user)
    _add_groups(ident, spec.additional_groups)
    env = build_env(spec, ident, hostname)
    path = find_executable(spec.args[0], env.get("PATH", DEFAULT_PATH))
    if spec.cwd and spec.cwd != "/":
        try:
            os.makedirs(spec.cwd, exist_ok=True)
        except OSError as e:
            raise ProcessSetupError(f"cannot create working directory {spec.cwd}: {e.strerror}", 126) from e
    return Prepared(path, spec.args, env, ident)


def _bounding() -> set[int]:
    """Our own bounding set (read once, in the zygote): no container can get more."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                bits = int(line.split()[1], 16)
                return {n for n in range(sc.last_cap() + 1) if bits >> n & 1}
    return set(range(sc.last_cap() + 1))


_BOUNDING = _bounding()


def become(spec: ProcessSpec, p: Prepared) -> None:
    """Drop to the target identity and capability set. Irreversible; call right before execve."""
    program = b""
    if spec.seccomp:
        from agent.runtime import seccomp

        program = base64.b64decode(spec.seccomp_program) if spec.seccomp_program else seccomp.DEFAULT
    # A profile of the user's is loaded last (it may refuse what the steps below need), which
    # no_new_privs allows; the default one, and any without no_new_privs, first, while we still hold
    # CAP_SYS_ADMIN (nothing below is a syscall the default refuses).
    late = bool(spec.seccomp_program) and spec.no_new_privileges
    if program and not late:
        sc.seccomp_set_filter(program)
    try:
        os.chdir(spec.cwd or "/")
    except OSError as e:
        raise ProcessSetupError(f"chdir to cwd ({spec.cwd}) set in config.json failed: {e.strerror}", 126) from e
    for resource, soft, hard in spec.rlimits:
        try:
            resource_mod.setrlimit(resource, (resource_mod.RLIM_INFINITY if soft < 0 else soft,
                                              resource_mod.RLIM_INFINITY if hard < 0 else hard))
        except (OSError, ValueError) as e:
            raise ProcessSetupError(f"--ulimit {_RLIMIT_NAMES.get(resource, resource)}={soft}:{hard}: {e} "
                                    "(raising a hard limit needs CAP_SYS_RESOURCE on the host)", 126) from e
    keep = {CAPABILITY_NUMBERS[c] for c in spec.capabilities if c in CAPABILITY_NUMBERS}
    if set(spec.capabilities) >= set(CAPABILITY_NUMBERS):
        keep &= _BOUNDING  # --privileged or --cap-add ALL: every one this kernel knows and we hold
    else:
        missing = sorted(c for c in spec.capabilities if CAPABILITY_NUMBERS.get(c, -1) not in _BOUNDING)
        if missing:
            raise ProcessSetupError(f"capabilities {', '.join(missing)} are not available: the agent itself "
                                    "lacks them on this host", 126)
    sc.drop_bounding(keep)
    os.setgroups(p.ident.groups)
    os.setgid(p.ident.gid)
    os.setuid(p.ident.uid)
    sc.clear_ambient()
    if p.ident.uid == 0:
        sc.capset(keep, keep, keep)
    if spec.no_new_privileges:
        sc.set_no_new_privs()
    if program and late:
        sc.seccomp_set_filter(program)


_RLIMIT_NAMES = {4: "core", 0: "cpu", 2: "data", 1: "fsize", 10: "locks", 8: "memlock", 12: "msgqueue", 13: "nice",
                 7: "nofile", 6: "nproc", 5: "rss", 14: "rtprio", 15: "rttime", 11: "sigpending", 3: "stack", 9: "as"}


def execute(p: Prepared) -> None:
    # An ignored signal survives execve: CPython ignores SIGPIPE and SIGXFSZ (so `yes | head` would
    # never end, and a write past RLIMIT_FSIZE would get EFBIG instead of the signal), and the agent's
    # own parent may have left others ignored (32, seen here). A container's command starts with every
    # signal at its default, none blocked.
    sc.default_signals()
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        os.execve(p.path, p.args, p.env)
    except OSError as e:
        raise ProcessSetupError(f'exec: "{p.args[0]}": {e.strerror}', 126) from e
