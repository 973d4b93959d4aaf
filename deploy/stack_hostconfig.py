"""A stack service's `docker run` keys: cap_add, cap_drop, security_opt, ulimits, dns, dns_search,
dns_opt, extra_hosts, sysctls, shm_size, group_add, logging. Read here (deploy/stack.py calls `read`),
checked by the agent's own rules (agent/hostconfig.py) so a stack is refused at deploy for what
`docker run` would refuse, and carried in ServiceSpec to every task's container.

A seccomp profile named by path (`security_opt: ["seccomp=/etc/app/profile.json"]`) is read when
the stack is deployed, as the docker CLI reads it, and travels as its JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent import hostconfig, logs
from agent.model import ContainerConfig, InvalidArgument, LogConfig, Ulimit

if TYPE_CHECKING:
    from deploy.stack import _At

KEYS = ("cap_add", "cap_drop", "security_opt", "ulimits", "dns", "dns_search", "dns_opt", "extra_hosts",
        "sysctls", "shm_size", "group_add", "logging")


def _strings(at: _At | None) -> tuple[str, ...]:
    """A string or a list of strings."""
    if at is None:
        return ()
    if isinstance(at.value, str):
        return (at.value,)
    return tuple(e.string() for e in at.elements())


def _pairs(at: _At | None, sep: str) -> tuple[tuple[str, str], ...]:
    """A mapping, or a list of KEY<sep>VALUE strings."""
    if at is None:
        return ()
    if isinstance(at.value, dict):
        return tuple((k, v.string()) for k, v in at.items())
    out = []
    for e in at.elements():
        text = e.string()
        k, s, v = text.partition(sep)
        if not s or not k:
            e.fail(f"{text!r}: expected KEY{sep}VALUE")
        out.append((k, v))
    return tuple(out)


def _extra_hosts(at: _At | None) -> tuple[str, ...]:
    """A mapping {name: ip}, or a list of "name:ip" (or Compose's newer "name=ip")."""
    if at is None:
        return ()
    if isinstance(at.value, dict):
        return tuple(f"{k}:{v.string()}" for k, v in at.items())
    out = []
    for e in at.elements():
        text = e.string()
        k, _, v = text.partition("=") if "=" in text else text.partition(":")
        out.append(f"{k}:{v}")
    return tuple(out)


def _security_opt(at: _At | None) -> tuple[str, ...]:
    out = []
    for opt in _strings(at):
        key, sep, value = opt.partition("=") if "=" in opt else opt.partition(":")
        if key == "seccomp" and value not in ("unconfined", "builtin", "default") and not value.lstrip().startswith("{"):
            if not value.startswith("/"):
                assert at is not None
                at.fail(f"seccomp profile {value!r}: give an absolute path (read when the stack is deployed)")
            try:
                with open(value) as f:
                    value = f.read()
            except OSError as e:
                assert at is not None
                at.fail(f"opening seccomp profile ({value}) failed: {e.strerror}")
        out.append(f"{key}={value}" if sep else key)
    return tuple(out)


def _ulimits(at: _At | None) -> tuple[tuple[str, int, int], ...]:
    if at is None:
        return ()
    out = []
    for name, v in at.items():
        if isinstance(v.value, dict):
            v.mapping(frozenset({"soft", "hard"}))
            soft_at, hard_at = v.child("soft"), v.child("hard")
            if soft_at is None or hard_at is None:
                v.fail("needs both soft and hard")
            soft, hard = soft_at.integer(-1), hard_at.integer(-1)
        else:
            soft = hard = v.integer(-1)
        out.append((name, soft, hard))
    return tuple(out)


def _logging(at: _At | None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Compose's `logging: {driver, options}` (a number in options is its string, as Compose reads
    `max-file: 3`). Checked on its own here; the node merges in its default options and checks again
    (`max-file` without `max-size` may be completed by a node's default)."""
    if at is None:
        return "", ()
    at.mapping(frozenset({"driver", "options"}))
    driver_at, opts_at = at.child("driver"), at.child("options")
    driver = driver_at.string() if driver_at is not None else ""
    opts: list[tuple[str, str]] = []
    if opts_at is not None:
        for k, v in opts_at.items():
            if isinstance(v.value, bool) or not isinstance(v.value, (str, int, float)):
                v.fail("a log option's value is a string")
            opts.append((k, v.value if isinstance(v.value, str) else str(v.value)))
    try:
        logs.rotation(LogConfig(driver, dict(opts)), complete=False)
    except InvalidArgument as e:
        target = driver_at if "driver" in str(e) and driver_at is not None else opts_at
        (target or at).fail(str(e))
    return driver, tuple(sorted(opts))


def read(at: _At) -> dict[str, Any]:
    """The ServiceSpec fields of these keys, checked; a bad one fails at its file:line: field."""
    from deploy.stack import parse_size

    shm = at.child("shm_size")
    fields: dict[str, Any] = {
        "cap_add": _strings(at.child("cap_add")), "cap_drop": _strings(at.child("cap_drop")),
        "security_opt": _security_opt(at.child("security_opt")), "ulimits": _ulimits(at.child("ulimits")),
        "dns": _strings(at.child("dns")), "dns_search": _strings(at.child("dns_search")),
        "dns_options": _strings(at.child("dns_opt")),
        "extra_hosts": _extra_hosts(at.child("extra_hosts")),
        "sysctls": tuple(sorted(_pairs(at.child("sysctls"), "="))), "shm_size": parse_size(shm) if shm else 0,
        "group_add": _strings(at.child("group_add")),
    }
    fields["log_driver"], fields["log_options"] = _logging(at.child("logging"))
    cfg = ContainerConfig(
        cap_add=list(fields["cap_add"]), cap_drop=list(fields["cap_drop"]), security_opt=list(fields["security_opt"]),
        ulimits=[Ulimit(n, s, h) for n, s, h in fields["ulimits"]], dns=list(fields["dns"]),
        dns_search=list(fields["dns_search"]), dns_options=list(fields["dns_options"]),
        extra_hosts=list(fields["extra_hosts"]), sysctls=dict(fields["sysctls"]), shm_size=fields["shm_size"],
        group_add=list(fields["group_add"]))
    try:
        hostconfig.check(cfg)
    except InvalidArgument as e:
        # name the key the message is about (each message starts with its docker flag)
        flag = str(e).split(" ", 1)[0].lstrip("-").replace("-", "_")
        key = {"add_host": "extra_hosts", "dns_option": "dns_opt", "sysctl": "sysctls", "ulimit": "ulimits",
               "seccomp": "security_opt"}.get(flag, flag)
        target = at.child(key) if key in KEYS else None
        (target or at).fail(str(e))
    return fields
