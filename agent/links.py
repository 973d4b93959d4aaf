"""docker's legacy links (--link NAME:ALIAS on the default bridge): the environment variables a
container gets of each container it links to, as moby's daemon/links/links.go writes them.

    ALIAS_NAME=/this/alias
    ALIAS_PORT=tcp://IP:PORT                     (the lowest exposed port)
    ALIAS_PORT_80_TCP=tcp://IP:80, ..._ADDR=IP, ..._PORT=80, ..._PROTO=tcp   (each exposed port)
    ALIAS_PORT_80_TCP_START=..., ALIAS_PORT_80_TCP_PORT_START=..., _END ...  (a run of 2+ ports)
    ALIAS_ENV_KEY=VALUE                          (the linked container's environment, but HOME, PATH)

ALIAS is the alias upper-cased, its "-" made "_". The /etc/hosts entries are the manager's
(ContainerManager._link_hosts); these are read at the start, as docker reads them.
"""

from __future__ import annotations

from collections.abc import Iterable


def _port_key(spec: str) -> tuple[str, int]:
    port, _, proto = spec.partition("/")
    return proto or "tcp", int(port)


def link_env(this: str, alias: str, ip: str, exposed: Iterable[str], env: Iterable[str]) -> list[str]:
    """The variables of one link: `this` container's name, the linked one's address, its exposed
    ports ("80/tcp") and its environment (KEY=VALUE)."""
    prefix = alias.upper().replace("-", "_")
    ports = sorted({_port_key(p) for p in exposed}, key=lambda pp: (pp[1], pp[0]))
    out: list[str] = []
    if ports:
        proto, port = ports[0]
        out.append(f"{prefix}_PORT={proto}://{ip}:{port}")
    # runs of consecutive ports of one protocol get _START/_END variables, as docker bulks them
    i = 0
    while i < len(ports):
        j = i
        while j + 1 < len(ports) and ports[j + 1] == (ports[i][0], ports[j][1] + 1):
            j += 1
        if j > i:
            proto, first, last = ports[i][0], ports[i][1], ports[j][1]
            key = f"{prefix}_PORT_{first}_{proto.upper()}"
            out += [f"{key}_START={proto}://{ip}:{first}", f"{key}_PORT_START={first}",
                    f"{key}_END={proto}://{ip}:{last}", f"{key}_PORT_END={last}"]
        i = j + 1
    for proto, port in ports:
        key = f"{prefix}_PORT_{port}_{proto.upper()}"
        out += [f"{key}={proto}://{ip}:{port}", f"{key}_ADDR={ip}", f"{key}_PORT={port}", f"{key}_PROTO={proto}"]
    out.append(f"{prefix}_NAME=/{this}/{alias}")
    for item in env:
        k, sep, v = item.partition("=")
        if sep and k not in ("HOME", "PATH"):
            out.append(f"{prefix}_ENV_{k}={v}")
    return out
