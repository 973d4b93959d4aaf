"""The containers' resolver logic (agent/resolver.py), sockets apart: zones from the network map
(scoped to a container's networks), A / PTR / tasks. answers, unready tasks left out of service
names, and forwarding of other names to an upstream server (a dnslib one on loopback)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from agent.resolver import Answerer, Record, Vip, host_nameservers, zone_of
from agent.runtime.network.vip import ruleset

RECORDS = [
    Record("s_front", "10.0.0.2", "s_web.1", "s_web.1.aa", ("s_web", "web", "www"), True),
    Record("s_front", "10.0.0.3", "s_web.2", "s_web.2.bb", ("s_web", "web", "www"), True),
    Record("s_front", "10.0.0.4", "s_web.3", "s_web.3.cc", ("s_web", "web", "www"), False),  # not ready
    Record("t_back", "10.9.0.2", "t_db.1", "t_db.1.dd", ("t_db", "db"), True),              # another stack
]


@pytest.fixture
def upstream() -> Iterator[tuple[str, int]]:
    """A DNS server on loopback that answers every A query with 192.0.2.7."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(4096)
            except TimeoutError:
                continue
            q = DNSRecord.parse(data)
            r = q.reply()
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.7"), ttl=60))
            s.sendto(r.pack(), addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield s.getsockname()
    finally:
        stop.set()
        t.join()
        s.close()


def ask(ans: Answerer, name: str, qtype: str = "A") -> DNSRecord:
    out = asyncio.run(ans.answer(DNSRecord.question(name, qtype).pack()))
    assert out is not None
    return DNSRecord.parse(out)


def ips(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr]


def test_names_of_the_containers_networks_only(upstream: tuple[str, int]) -> None:
    ans = Answerer(zone_of(RECORDS, ["s_front"]), [upstream])
    assert ips(ask(ans, "web")) == ["10.0.0.2", "10.0.0.3"]  # the unready task is left out
    assert ips(ask(ans, "s_web")) == ips(ask(ans, "www.")) == ips(ask(ans, "tasks.web")) == ["10.0.0.2", "10.0.0.3"]
    assert ips(ask(ans, "s_web.3")) == ["10.0.0.4"]  # its own name still resolves
    assert ips(ask(ans, "S_WEB.1.AA")) == ["10.0.0.2"]  # container names, any case
    assert all(rr.ttl == 2 for rr in ask(ans, "web").rr)
    aaaa = ask(ans, "web", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr
    ptr = ask(ans, "2.0.0.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in ptr.rr] == ["s_web.1."]
    # another stack's private network is not visible: the name goes upstream like any other
    assert ips(ask(ans, "db")) == ["192.0.2.7"]
    assert ips(ask(ans, "example.org")) == ["192.0.2.7"]


def test_no_upstream_answering_is_servfail() -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        ans = Answerer(zone_of(RECORDS, ["t_back"]), [dead.getsockname()], timeout=0.2)
        assert ips(ask(ans, "db")) == ["10.9.0.2"]
        assert ask(ans, "example.org").header.rcode == RCODE.SERVFAIL
        assert ask(Answerer(zone_of([], []), []), "x").header.rcode == RCODE.SERVFAIL
    finally:
        dead.close()
    assert asyncio.run(Answerer(zone_of([], []), []).answer(b"not dns")) is None


def test_host_nameservers(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "resolv.conf"
    p.write_text("search x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bad\n")
    assert host_nameservers(str(p)) == [("127.0.0.53", 53), ("fe80::1", 53)]


def test_repeated_queries_keep_their_id_and_a_new_map_is_seen_at_once() -> None:
    ans = Answerer(zone_of(RECORDS, ["s_front"]), [])
    for qid in (1, 2, 0xBEEF):
        q = DNSRecord.question("web")
        q.header.id = qid
        out = asyncio.run(ans.answer(q.pack()))
        assert out is not None and DNSRecord.parse(out).header.id == qid
        assert ips(DNSRecord.parse(out)) == ["10.0.0.2", "10.0.0.3"]
    ans.zone = zone_of(RECORDS[1:], ["s_front"])
    assert ips(ask(ans, "web")) == ["10.0.0.3"]


def test_a_service_with_a_vip_answers_with_it_and_tasks_name_with_its_tasks() -> None:
    vips = [Vip("s_front", "10.0.0.250", ("s_web", "web", "www")), Vip("t_back", "10.9.0.250", ("t_db", "db"))]
    ans = Answerer(zone_of(RECORDS, ["s_front"], vips), [])
    assert ips(ask(ans, "web")) == ips(ask(ans, "www")) == ["10.0.0.250"]
    assert ips(ask(ans, "tasks.web")) == ["10.0.0.2", "10.0.0.3"]
    assert ask(ans, "db").header.rcode == RCODE.SERVFAIL  # not this container's network, and no upstream


def test_vip_ruleset_spreads_over_the_backends() -> None:
    text = ruleset([("10.0.0.250", ["10.0.0.2", "10.0.0.3", "10.0.0.4"]), ("10.0.0.251", [])], first=True)
    assert text.splitlines() == [
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        ":DY-VIP - [0:0]", "-A OUTPUT -j DY-VIP",
        "-A DY-VIP -d 10.0.0.250/32 -m statistic --mode random --probability 0.33333333 -j DNAT --to-destination 10.0.0.2",
        "-A DY-VIP -d 10.0.0.250/32 -m statistic --mode random --probability 0.50000000 -j DNAT --to-destination 10.0.0.3",
        "-A DY-VIP -d 10.0.0.250/32 -j DNAT --to-destination 10.0.0.4",
        "COMMIT"]
    assert ruleset([], first=False).splitlines() == ["*nat", ":DY-VIP - [0:0]", "COMMIT"]
