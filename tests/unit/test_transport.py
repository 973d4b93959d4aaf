"""common/transport.py is the only maker of gRPC channels and servers (the TLS change then touches
one file), and its table gives each kind of channel the options it had."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from common import transport
from common.transport import Role

REPO = Path(__file__).resolve().parents[2]
MAKERS = re.compile(r"\b(insecure_channel|secure_channel|add_insecure_port|add_secure_port|aio\.server|grpc\.server)\b")
ALLOWED = {Path("common/transport.py"), Path("tests/unit/test_transport.py")}


def test_nothing_else_makes_a_channel_or_a_server() -> None:
    found = []
    for top in ("agent", "scheduler", "deploy", "common", "tests", "protos"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel in ALLOWED or "_pb2" in path.name:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if MAKERS.search(line):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "use common.transport.dial/serve instead:\n" + "\n".join(found)


def test_options_by_who_dials_whom() -> None:
    join = dict(transport.channel_options(transport.AGENT, Role.SCHEDULER))
    assert join["grpc.initial_reconnect_backoff_ms"] == 100 and join["grpc.max_reconnect_backoff_ms"] == 500
    dispatch = dict(transport.channel_options(transport.SCHEDULER, Role.AGENT))
    assert dispatch["grpc.initial_reconnect_backoff_ms"] == 200 and dispatch["grpc.max_reconnect_backoff_ms"] == 1000
    for opts in (join, dispatch, dict(transport.channel_options(transport.CLI, Role.AGENT))):
        assert opts["grpc.enable_http_proxy"] == 0
        assert opts["grpc.max_receive_message_length"] == opts["grpc.max_send_message_length"] == 64 << 20
    assert "grpc.initial_reconnect_backoff_ms" not in dict(transport.channel_options(transport.CLI, Role.AGENT))


def test_addresses() -> None:
    assert transport.target("tcp://127.0.0.1:2377") == "127.0.0.1:2377"
    assert transport.target("unix:///run/dockyard/agent.sock") == "unix:///run/dockyard/agent.sock"
    with pytest.raises(ValueError, match="empty address"):
        transport.target("")


def test_serve_binds_a_free_port_and_names_a_taken_one() -> None:
    async def main() -> None:
        first = transport.server(transport.SCHEDULER)
        port = transport.serve(first, "127.0.0.1:0", transport.SCHEDULER)
        assert port > 0
        await first.start()
        try:
            second = transport.server(transport.SCHEDULER)
            with pytest.raises(transport.BindError, match=f"cannot bind 127.0.0.1:{port}"):
                transport.serve(second, f"127.0.0.1:{port}", transport.SCHEDULER)
            async with transport.dial(f"tcp://127.0.0.1:{port}", transport.AGENT, Role.SCHEDULER) as ch:
                await asyncio.wait_for(ch.channel_ready(), 5)
        finally:
            await first.stop(None)

    asyncio.run(main())
