"""The announcement a moved container sends from each cluster interface (agent/runtime/network/
inside.py): one broadcast gratuitous ARP request for its own address."""

from __future__ import annotations

import struct

from agent.runtime.network.inside import garp_frame


def test_the_arrival_announcement_is_a_gratuitous_arp() -> None:
    f = garp_frame("02:42:0a:fd:00:05", "10.253.0.5")
    assert len(f) == 42
    assert f[:6] == b"\xff" * 6 and f[6:12] == bytes.fromhex("02420afd0005")
    ethertype, htype, ptype, hlen, plen, op = struct.unpack("!HHHBBH", f[12:22])
    assert (ethertype, htype, ptype, hlen, plen, op) == (0x0806, 1, 0x0800, 6, 4, 1)
    sender_mac, sender_ip, target_mac, target_ip = f[22:28], f[28:32], f[32:38], f[38:42]
    assert sender_mac == bytes.fromhex("02420afd0005") and target_mac == b"\0" * 6
    assert sender_ip == target_ip == bytes([10, 253, 0, 5])  # gratuitous: asks for its own address
