"""docker's legacy link variables (agent/links.py), against what moby's links.go writes."""

from __future__ import annotations

from agent.links import link_env


def test_ports_name_and_environment() -> None:
    env = link_env("web", "db-1", "10.0.0.5", ["5432/tcp", "53/udp"], ["FOO=1", "PATH=/bin", "HOME=/root", "X"])
    assert env == [
        "DB_1_PORT=udp://10.0.0.5:53",
        "DB_1_PORT_53_UDP=udp://10.0.0.5:53", "DB_1_PORT_53_UDP_ADDR=10.0.0.5", "DB_1_PORT_53_UDP_PORT=53",
        "DB_1_PORT_53_UDP_PROTO=udp",
        "DB_1_PORT_5432_TCP=tcp://10.0.0.5:5432", "DB_1_PORT_5432_TCP_ADDR=10.0.0.5",
        "DB_1_PORT_5432_TCP_PORT=5432", "DB_1_PORT_5432_TCP_PROTO=tcp",
        "DB_1_NAME=/web/db-1",
        "DB_1_ENV_FOO=1",
    ]


def test_a_run_of_ports_gets_start_and_end() -> None:
    env = link_env("a", "b", "1.2.3.4", ["8000/tcp", "8001/tcp", "8002/tcp", "9000/tcp"], [])
    assert "B_PORT_8000_TCP_START=tcp://1.2.3.4:8000" in env and "B_PORT_8000_TCP_END=tcp://1.2.3.4:8002" in env
    assert "B_PORT_8000_TCP_PORT_START=8000" in env and "B_PORT_8000_TCP_PORT_END=8002" in env
    assert not [e for e in env if e.startswith("B_PORT_9000_TCP_START")]
    assert env[0] == "B_PORT=tcp://1.2.3.4:8000"


def test_no_ports() -> None:
    assert link_env("a", "b", "1.2.3.4", [], ["K=v=w"]) == ["B_NAME=/a/b", "B_ENV_K=v=w"]
