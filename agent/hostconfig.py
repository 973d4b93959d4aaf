"""The rest of `docker run`'s HostConfig, checked and turned into what the runtime applies:
capabilities (--cap-add/--cap-drop), seccomp (docker's JSON profile format), ulimits, DNS and
/etc/hosts entries, namespaced sysctls, /dev/shm size, extra groups.

Pure functions of the container config (and of the host's resolv.conf text, or the bridge's
gateway, passed in): the container manager calls them at create, to refuse bad input before
anything is made, and at start, to build the runtime spec.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from agent.model import ContainerConfig, InvalidArgument, Ulimit
from agent.runtime.spec import CAPABILITY_NUMBERS, DEFAULT_CAPABILITIES

# --- capabilities ----------------------------------------------------------------------------------


def _cap_name(name: str, flag: str) -> str:
    n = name.strip().upper()
    if n == "ALL":
        return n
    if not n.startswith("CAP_"):
        n = "CAP_" + n
    if n not in CAPABILITY_NUMBERS:
        raise InvalidArgument(f"{flag} {name}: unknown capability")
    return n


def capabilities(cfg: ContainerConfig) -> list[str]:
    """docker's rule: the default set, or every capability if cap_add has ALL; minus cap_drop
    (ALL: every one); plus cap_add."""
    add = [_cap_name(c, "--cap-add") for c in cfg.cap_add]
    drop = [_cap_name(c, "--cap-drop") for c in cfg.cap_drop]
    caps = list(CAPABILITY_NUMBERS) if "ALL" in add else list(DEFAULT_CAPABILITIES)
    if "ALL" in drop:
        caps = []
    caps = [c for c in caps if c not in drop]
    for c in add:
        if c != "ALL" and c not in caps:
            caps.append(c)
    return sorted(caps, key=CAPABILITY_NUMBERS.__getitem__)


# --- seccomp ---------------------------------------------------------------------------------------

_ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_TRAP", "SCMP_ACT_LOG", "SCMP_ACT_TRACE")
_OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ")


@dataclass
class Security:
    seccomp: bool = True            # a filter at all (False: unconfined)
    profile: dict[str, Any] | None = None   # a docker JSON profile; None: the built-in default
    no_new_privileges: bool = True


def security(cfg: ContainerConfig) -> Security:
    """--security-opt: seccomp=unconfined|builtin|<a docker JSON profile>, no-new-privileges[=true|false].
    The CLI sends a profile file's content, as docker's does."""
    out = Security()
    for opt in cfg.security_opt:
        key, _, value = opt.partition("=") if "=" in opt else opt.partition(":")
        if key == "seccomp":
            if value in ("unconfined", "builtin", "default"):
                out.seccomp, out.profile = value != "unconfined", None
            else:
                out.seccomp, out.profile = True, parse_profile(value)
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            out.no_new_privileges = value != "false"
        elif key in ("label", "apparmor"):
            raise InvalidArgument(f"--security-opt {opt}: {key} is not supported on this host "
                                  "(no SELinux or AppArmor in dockyard)")
        else:
            raise InvalidArgument(f"--security-opt {opt}: must be seccomp=unconfined|builtin|PROFILE "
                                  "or no-new-privileges[=true|false]")
    return out


def parse_profile(text: str) -> dict[str, Any]:
    """A docker seccomp profile (JSON), checked: every action, operator and field named if wrong."""
    try:
        p = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"seccomp profile: not JSON ({e}); give seccomp=/path/to/profile.json") from None
    if not isinstance(p, dict):
        raise InvalidArgument("seccomp profile: expected a JSON object")
    known = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags",
             "listenerPath", "listenerMetadata"}
    for k in p:
        if k not in known:
            raise InvalidArgument(f"seccomp profile: unknown field {k!r}")
    if p.get("listenerPath"):
        raise InvalidArgument("seccomp profile: listenerPath (a seccomp agent) is not supported")
    if p.get("defaultAction") not in _ACTIONS:
        raise InvalidArgument(f"seccomp profile: defaultAction {p.get('defaultAction')!r} is not one of "
                              f"{', '.join(_ACTIONS)}")
    for i, rule in enumerate(p.get("syscalls") or []):
        where = f"seccomp profile: syscalls[{i}]"
        if not isinstance(rule, dict):
            raise InvalidArgument(f"{where}: expected an object")
        for k in rule:
            if k not in ("names", "name", "action", "args", "errnoRet", "includes", "excludes", "comment"):
                raise InvalidArgument(f"{where}: unknown field {k!r}")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not all(isinstance(n, str) for n in names):
            raise InvalidArgument(f"{where}: names must be a list of syscall names")
        if rule.get("action") not in _ACTIONS:
            raise InvalidArgument(f"{where}: action {rule.get('action')!r} is not one of {', '.join(_ACTIONS)}")
        for j, a in enumerate(rule.get("args") or []):
            if not isinstance(a, dict) or a.get("op") not in _OPS or not isinstance(a.get("index"), int) \
                    or not 0 <= a["index"] <= 5:
                raise InvalidArgument(f"{where}.args[{j}]: needs index 0-5, value and op (one of {', '.join(_OPS)})")
    return p


def seccomp_program(sec: Security, caps: list[str]) -> str:
    """The filter the container gets, compiled here, as base64 for the runtime spec; "" for the
    built-in default on the default capabilities (the zygote holds that one compiled)."""
    from agent.runtime import seccomp

    if not sec.seccomp:
        return ""
    if sec.profile is not None:
        try:
            return base64.b64encode(seccomp.compile_profile(sec.profile, caps)).decode()
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"seccomp profile: {e}") from None
    if sorted(caps) == sorted(DEFAULT_CAPABILITIES):
        return ""
    return base64.b64encode(seccomp.compile_default(caps)).decode()


# --- ulimits ---------------------------------------------------------------------------------------

ULIMITS = {"core": 4, "cpu": 0, "data": 2, "fsize": 1, "locks": 10, "memlock": 8, "msgqueue": 12, "nice": 13,
           "nofile": 7, "nproc": 6, "rss": 5, "rtprio": 14, "rttime": 15, "sigpending": 11, "stack": 3, "as": 9}
UNLIMITED = -1


def parse_ulimit(text: str) -> Ulimit:
    """docker's --ulimit NAME=SOFT[:HARD] (-1 or unlimited: no limit)."""
    name, sep, value = text.partition("=")
    if not sep or not value:
        raise InvalidArgument(f"--ulimit {text}: expected NAME=SOFT[:HARD]")
    soft_s, _, hard_s = value.partition(":")

    def num(v: str) -> int:
        if v in ("-1", "unlimited"):
            return UNLIMITED
        if not v.isdigit():
            raise InvalidArgument(f"--ulimit {text}: {v!r} is not a number")
        return int(v)

    soft = num(soft_s)
    return Ulimit(name=name, soft=soft, hard=num(hard_s) if hard_s else soft)


def check_ulimit(u: Ulimit) -> None:
    if u.name not in ULIMITS:
        raise InvalidArgument(f"--ulimit {u.name}: unknown limit (one of {', '.join(sorted(ULIMITS))})")
    if u.soft < UNLIMITED or u.hard < UNLIMITED:
        raise InvalidArgument(f"--ulimit {u.name}={u.soft}:{u.hard}: out of range")
    if u.hard != UNLIMITED and (u.soft == UNLIMITED or u.soft > u.hard):
        raise InvalidArgument(f"--ulimit {u.name}={u.soft}:{u.hard}: the soft limit is above the hard limit")


# --- sysctls ---------------------------------------------------------------------------------------

_IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
                "kernel.shmmni", "kernel.shm_rmid_forced"}


def check_sysctls(cfg: ContainerConfig) -> None:
    """docker's rule: only sysctls of the container's own namespaces (IPC, net, UTS via flags)."""
    for key in cfg.sysctls:
        k = key.replace("/", ".")
        if k in _IPC_SYSCTLS or k.startswith("fs.mqueue."):
            if cfg.ipc_mode == "host":
                raise InvalidArgument(f"--sysctl {key}: not allowed with --ipc host (it would change the host's)")
        elif k.startswith("net."):
            if cfg.network_mode == "host":
                raise InvalidArgument(f"--sysctl {key}: not allowed with --network host (it would change the host's)")
        elif k in ("kernel.domainname", "kernel.hostname"):
            raise InvalidArgument(f"--sysctl {key}: set it with --hostname/--domainname instead")
        else:
            raise InvalidArgument(f"--sysctl {key}: not a namespaced sysctl, so a container cannot have its own "
                                  "(docker refuses it too)")
        if ".." in k.split(".") or not re.fullmatch(r"[a-zA-Z0-9_.\-]+", k):
            raise InvalidArgument(f"--sysctl {key}: invalid name")


# --- /etc/resolv.conf and /etc/hosts ---------------------------------------------------------------

def check_dns(cfg: ContainerConfig) -> None:
    for d in cfg.dns:
        try:
            ipaddress.ip_address(d)
        except ValueError:
            raise InvalidArgument(f"--dns {d}: not an IP address") from None
    for h in cfg.extra_hosts:
        name, sep, ip = h.partition(":")
        if not sep or not name or not ip:
            raise InvalidArgument(f"--add-host {h}: expected NAME:IP (or NAME:host-gateway)")
        if ip != "host-gateway":
            try:
                ipaddress.ip_address(ip.strip("[]"))
            except ValueError:
                raise InvalidArgument(f"--add-host {h}: {ip!r} is not an IP address") from None
    for s in cfg.dns_search:
        if not s or any(c.isspace() for c in s):
            raise InvalidArgument(f"--dns-search {s!r}: not a domain")
    for o in cfg.dns_options:
        if not o or any(c.isspace() for c in o):
            raise InvalidArgument(f"--dns-option {o!r}: not a resolver option")


def resolv_conf(cfg: ContainerConfig, host: str) -> str:
    """The host's resolv.conf (loopback nameservers removed), with --dns replacing its nameservers,
    --dns-search its search domains, and --dns-option added to its options."""
    lines = host.splitlines()
    if cfg.dns:
        lines = [ln for ln in lines if not ln.startswith("nameserver")] + [f"nameserver {d}" for d in cfg.dns]
    if cfg.dns_search:
        lines = [ln for ln in lines if not ln.startswith(("search", "domain"))]
        lines.append("search " + " ".join(s for s in cfg.dns_search if s != "."))
    if cfg.dns_options:
        lines.append("options " + " ".join(cfg.dns_options))
    return "\n".join(lines) + "\n"


def extra_hosts(cfg: ContainerConfig, gateway: str) -> str:
    """--add-host lines for /etc/hosts; host-gateway is the agent's bridge address (docker's)."""
    out = []
    for h in cfg.extra_hosts:
        name, _, ip = h.partition(":")
        out.append(f"{gateway if ip == 'host-gateway' else ip.strip('[]')}\t{name}\n")
    return "".join(out)


def check(cfg: ContainerConfig) -> None:
    """Everything here, at create: InvalidArgument naming the flag and value otherwise."""
    caps = capabilities(cfg)
    sec = security(cfg)
    if sec.profile is not None:
        seccomp_program(sec, caps)  # compiles: a profile libseccomp refuses is refused now
    for u in cfg.ulimits:
        check_ulimit(u)
    check_sysctls(cfg)
    check_dns(cfg)
    if cfg.shm_size < 0:
        raise InvalidArgument(f"--shm-size {cfg.shm_size}: must be positive")
    for g in cfg.group_add:
        if not g or ":" in g or any(c.isspace() for c in g):
            raise InvalidArgument(f"--group-add {g!r}: a group name or number")
