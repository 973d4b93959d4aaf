"""The resolver's sockets in a real container network namespace (agent/resolver.py): bound at
127.0.0.11:53 inside it by a thread that comes back (the caller's namespace unchanged), before lo
is even up, answering UDP and TCP queries made from inside; closed when asked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from agent.resolver import Record, Resolvers

pytestmark = [pytest.mark.root, pytest.mark.slow]

QUERY = """
import socket, struct, sys
from dnslib import DNSRecord
q = DNSRecord.question(sys.argv[1]).pack()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
u.sendto(q, ("127.0.0.11", 53))
print(" ".join(str(rr.rdata) for rr in DNSRecord.parse(u.recv(4096)).rr))
t = socket.create_connection(("127.0.0.11", 53), timeout=3)
t.sendall(struct.pack("!H", len(q)) + q)
n = struct.unpack("!H", t.recv(2))[0]
data = b""
while len(data) < n:
    data += t.recv(n - len(data))
print(" ".join(str(rr.rdata) for rr in DNSRecord.parse(data).rr))
"""


@pytest.fixture
def netns_pid() -> Iterator[int]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = subprocess.Popen(["unshare", "--net", "--", "sleep", "120"])
    try:
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{p.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            assert time.monotonic() < deadline, "unshare --net did not happen"
            time.sleep(0.01)
        yield p.pid
    finally:
        p.kill()
        p.wait()


def test_sockets_inside_the_namespace_answer_udp_and_tcp(netns_pid: int) -> None:
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        r = Resolvers()
        r.loop = loop
        r.set_records([Record("n", "10.0.0.2", "s_web.1", "s_web.1.x", ("s_web", "web"), True),
                       Record("n", "10.0.0.3", "s_web.2", "s_web.2.y", ("s_web", "web"), True)])
        before = os.stat("/proc/self/ns/net").st_ino
        r.open("c1", ("n",), netns_pid)  # lo is still down in there: bound with IP_FREEBIND
        assert os.stat("/proc/self/ns/net").st_ino == before
        ns = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--"]
        subprocess.run([*ns, "ip", "link", "set", "lo", "up"], check=True)
        out = subprocess.run([*ns, sys.executable, "-c", QUERY, "tasks.web"], capture_output=True, text=True,
                             timeout=30)
        assert out.stdout.split("\n")[:2] == ["10.0.0.2 10.0.0.3", "10.0.0.2 10.0.0.3"], out.stderr
        assert "127.0.0.11:53" in subprocess.run([*ns, "ss", "-lnu"], capture_output=True, text=True).stdout
        # and the virtual IPs' chain, hooked into the namespace's own nat OUTPUT
        assert "-A OUTPUT -j DY-VIP" in subprocess.run([*ns, "iptables", "-t", "nat", "-S"], capture_output=True,
                                                      text=True).stdout
        # the map changes: the next answer follows
        r.set_records([Record("n", "10.0.0.3", "s_web.2", "s_web.2.y", ("s_web", "web"), True)])
        out = subprocess.run([*ns, sys.executable, "-c", QUERY, "web"], capture_output=True, text=True, timeout=30)
        assert out.stdout.split("\n")[0] == "10.0.0.3"
        loop.call_soon_threadsafe(r.close, "c1")
        deadline = time.monotonic() + 5
        while "127.0.0.11:53" in subprocess.run([*ns, "ss", "-lnu"], capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "resolver socket still open"
            time.sleep(0.05)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join()
        loop.close()


def test_vip_rules_go_only_into_the_namespace_the_resolver_opened() -> None:
    """A container's pid may be another process's by the time a ruleset is applied (the agent's
    own namespace's, even): nothing is written then. Before, such a write left a DY-VIP chain in
    the machine's own nat table."""
    from agent.runtime.network import vip
    from agent.runtime.network.model import NetworkError

    def nat() -> str:
        return subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout

    before = nat()
    text = vip.ruleset([("10.254.0.254", ["10.254.0.2"])], first=False)
    with pytest.raises(NetworkError, match="no longer in its container's network namespace"):
        vip.apply(os.getpid(), text, first=False, netns=vip.netns_of(os.getpid()) + 1)
    assert nat() == before
    assert "DY-VIP" not in nat()
