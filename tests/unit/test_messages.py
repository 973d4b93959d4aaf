"""The messages between the agent, zygote, shim, init and exec helper: one codec, typed, and a
message that does not belong is an error that names it (agent/runtime/messages.py)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from agent.runtime import messages as m
from agent.runtime.spec import ProcessSpec, RuntimeSpec


def _spec() -> RuntimeSpec:
    return RuntimeSpec(id="c1", state_dir="/run/x", rootfs="/r", mounts=[],
                       process=ProcessSpec(args=["/bin/true"], env=["A=1"]), network={"ip": "10.0.0.2"})


@pytest.mark.parametrize("msg", [
    m.Start(_spec(), "/run/shim", "/run/shim/sock"),
    m.Exec(7, ProcessSpec(args=["sh"], tty=True), m.CgroupRef("/sys/fs/cgroup", None, "c1")),
    m.Exec(7, ProcessSpec(args=["sh"])),
    m.Attach(42), m.Attached(), m.InitSpec(_spec()), m.Mounted(), m.Configure({"ip": "10.0.0.2"}),
    m.Configure(), m.Pty(), m.Ready(), m.Go(), m.Launched(9), m.Started(9, 8), m.Started(9),
    m.Exit(137), m.Error("no such file", 127), m.Failed("spec: bad"),
])
def test_every_message_round_trips(msg: m.Message) -> None:
    assert m.decode(m.encode(msg)) == msg


def test_the_monitor_s_two_messages_keep_their_wire_form() -> None:
    # monitor.c sends {"op":"go"} and parses an init's {"op":"error","error":...}: fixed in C.
    assert json.loads(m.encode(m.Go())) == {"op": "go"}
    assert json.loads(m.encode(m.Error("boom", 2))) == {"op": "error", "error": "boom", "exit_code": 2}
    assert m.decode(b'{"op": "error", "error": "exec: x"}') == m.Error("exec: x", 128)


def test_an_unknown_op_is_named() -> None:
    with pytest.raises(m.ProtocolError, match="unknown message 'strat'"):
        m.decode(b'{"op": "strat", "pid": 1}')


def test_a_message_out_of_place_names_it_and_what_was_expected() -> None:
    with pytest.raises(m.ProtocolError, match="unexpected message 'ready'; expected attached or error"):
        m.decode(m.encode(m.Ready()), m.Attached, m.Error)


@pytest.mark.parametrize("data, what", [
    (b'{"op": "attach"}', "malformed message 'attach'"),
    (b'{"op": "attach", "pid": 1, "extra": 2}', "malformed message 'attach'"),
    (b'{"op": "exec", "pid": 1, "process": {"argz": []}}', "malformed message 'exec'"),
    (b'[1, 2]', "not a message"),
    (b'not json', "not a message"),
    (b'{"pid": 1}', "not a message"),
])
def test_a_malformed_message_is_an_error_not_a_hang(data: bytes, what: str) -> None:
    with pytest.raises(m.ProtocolError, match=what):
        m.decode(data)


def test_descriptors_travel_with_a_message_and_are_closed_when_it_is_refused() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        m.send(a, m.Pty(), [r])
        msg, fds = m.recv(b, m.Pty)
        assert msg == m.Pty() and len(fds) == 1
        os.write(w, b"x")
        assert os.read(fds[0], 1) == b"x"
        os.close(fds[0])
        before = sorted(os.listdir("/proc/self/fd"))
        m.send(a, m.Ready(), [r])
        with pytest.raises(m.ProtocolError):
            m.recv(b, m.Pty)
        assert sorted(os.listdir("/proc/self/fd")) == before   # the passed copy was closed
        a.close()
        assert m.recv(b) == (None, [])   # EOF
    finally:
        for s in (a, b):
            s.close()
        os.close(r)
        os.close(w)

