"""The container network of one host: a bridge, veth pairs, IPAM, published ports (iptables DNAT).

See README.md for the flow and the iptables model; bridge.py holds the lifecycle.
"""

from agent.runtime.network.bridge import BridgeNetwork
from agent.runtime.network.inside import announce, configure_inside, loopback_up
from agent.runtime.network.model import Endpoint, NetworkError, PortInUse, PortMapping
from agent.runtime.network.ports import parse_publish

__all__ = [
    "BridgeNetwork",
    "Endpoint",
    "NetworkError",
    "PortInUse",
    "PortMapping",
    "announce",
    "configure_inside",
    "loopback_up",
    "parse_publish",
]
