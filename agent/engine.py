"""The engine settings dockerd has and the agent takes, from its flags or from daemon.json
(common/settings.py reads the file): registry mirrors and insecure registries, the containers'
default log driver and options, default ulimits, DNS servers, search domains and options, the
bridge's address (bip).
Checked here once, whichever way they came; a bad one is named by where it came from
(``--registry-mirror`` or ``/etc/dockyard/daemon.json: registry-mirrors``).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent import hostconfig, logs
from agent.images.registryconfig import RegistryConfig
from agent.model import InvalidArgument, LogConfig, Ulimit


class EngineSettingError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class EngineSettings:
    registries: RegistryConfig = field(default_factory=RegistryConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig("json-file"))
    ulimits: tuple[Ulimit, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()


def mirror(url: str) -> str:
    """dockerd's ValidateMirror: http(s)://host[:port][/], nothing else; returned without the slash."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise EngineSettingError(f"invalid mirror {url!r}: unsupported scheme {u.scheme!r} in {url!r} "
                                 "(http:// or https://)")
    if not u.hostname or u.username or u.password or u.query or u.fragment or u.path not in ("", "/"):
        raise EngineSettingError(f"invalid mirror {url!r}: give only scheme, host and port (like "
                                 "https://mirror.example.com or http://127.0.0.1:5000)")
    return f"{u.scheme}://{u.netloc}"


def insecure_registry(text: str) -> str:
    """dockerd's insecure-registries: host[:port], or a CIDR of registry addresses."""
    if "://" in text:
        raise EngineSettingError(f"insecure registry {text!r} should not contain '://'")
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise EngineSettingError(f"insecure registry {text!r}: not a host[:port] or a CIDR") from None
        return text
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise EngineSettingError(f"insecure registry {text!r}: not a host[:port] or a CIDR")
    return text


def bridge_subnet(bip: str) -> str:
    """docker's --bip ADDRESS/PREFIX: the bridge's address, which here is always the subnet's first."""
    try:
        iface = ipaddress.IPv4Interface(bip)
    except ValueError as e:
        raise EngineSettingError(f"{bip!r}: {e} (like 172.29.0.1/16)") from None
    if iface.network.prefixlen > 30:
        raise EngineSettingError(f"{bip!r}: give ADDRESS/PREFIX with a prefix of /30 or shorter (like 172.29.0.1/16)")
    if iface.ip != iface.network.network_address + 1:
        raise EngineSettingError(f"{bip!r}: the bridge takes its subnet's first address here "
                                 f"({iface.network.network_address + 1}/{iface.network.prefixlen})")
    return str(iface.network)


def settings(values: dict[str, Sequence[str] | str], origin: Callable[[str], str]) -> EngineSettings:
    """The agent's engine settings from its parameters' values (as click gives them); `origin(param)`
    names a parameter for a message (its flag, or daemon.json's file and key)."""

    def many(param: str) -> Sequence[str]:
        v = values.get(param) or ()
        return (v,) if isinstance(v, str) else v

    def check(param: str, fn: Callable[[str], str]) -> tuple[str, ...]:
        out = []
        for v in many(param):
            try:
                out.append(fn(v))
            except (EngineSettingError, InvalidArgument) as e:
                raise EngineSettingError(f"{origin(param)}: {e}") from None
        return tuple(out)

    mirrors = check("registry_mirrors", mirror)
    insecure = check("insecure_registries", insecure_registry)
    dns = check("dns", _dns)
    try:
        opts = logs.parse_opts(list(many("log_opts")))
    except InvalidArgument as e:
        raise EngineSettingError(f"{origin('log_opts')}: {e}") from None
    log = LogConfig(str(values.get("log_driver") or "json-file"), opts)
    try:
        logs.rotation(log)
    except InvalidArgument as e:
        where = origin("log_driver") if "driver" in str(e) else origin("log_opts")
        raise EngineSettingError(f"{where}: {e}") from None
    ulimits = []
    for text in many("default_ulimits"):
        try:
            u = hostconfig.parse_ulimit(text)
            hostconfig.check_ulimit(u)
        except InvalidArgument as e:
            raise EngineSettingError(f"{origin('default_ulimits')}: {str(e).removeprefix('--ulimit ')}") from None
        ulimits.append(u)
    search = check("dns_search", _search_domain)
    options = check("dns_options", _dns_option)
    return EngineSettings(RegistryConfig(mirrors, insecure), log, tuple(ulimits), dns, search, options)


def _search_domain(text: str) -> str:
    # dockerd's ValidateDNSSearch: "." alone, or a domain of labels of at most 63 characters
    name = text.rstrip(".") if text != "." else text
    if text != "." and (not name or len(name) > 255
                        or not all(0 < len(p) <= 63 and p.replace("-", "").isalnum() for p in name.split("."))):
        raise EngineSettingError(f"{text!r} is not a valid domain")
    return text


def _dns_option(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise EngineSettingError(f"{text!r} is not a resolv.conf option (like ndots:2)")
    return text


def _dns(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise EngineSettingError(f"{text!r} is not an IP address") from None
