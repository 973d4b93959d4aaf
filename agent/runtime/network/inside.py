"""What runs inside the container's network namespace, in the container init before exec."""

from __future__ import annotations

from agent.runtime import syscalls
from agent.runtime.network.model import Endpoint, NetworkError

EEXIST = 17


def preload() -> None:
    """Imports pyroute2 now (about 0.3 s), so that a container init forked later from this process
    configures its network in milliseconds. The agent calls it once at start."""
    import pyroute2  # noqa: F401


def configure_inside(endpoint: Endpoint) -> None:
    """lo up, eth0 address and up, default route via the gateway; in the current netns.

    The netlink calls take a few milliseconds; importing pyroute2 takes about 0.3 s, so call
    preload() in the process the container init is forked from.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    syscalls.set_interface_up("lo")
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname="eth0")
        if not found:
            raise NetworkError(f"container {endpoint.container_id}: no eth0 in its network namespace")
        eth0 = found[0]
        try:
            ipr.addr("add", index=eth0, address=endpoint.ip, prefixlen=endpoint.prefixlen)
        except NetlinkError as e:
            if e.code != EEXIST:
                raise NetworkError(f"eth0 address {endpoint.ip}/{endpoint.prefixlen}: {e}") from e
        ipr.link("set", index=eth0, state="up")
        try:
            ipr.route("replace", dst="0.0.0.0/0", gateway=endpoint.gateway, oif=eth0)
        except NetlinkError as e:
            raise NetworkError(f"default route via {endpoint.gateway}: {e}") from e


def loopback_up() -> None:
    """For --network none: just lo, with the classic ioctls."""
    syscalls.set_interface_up("lo")
