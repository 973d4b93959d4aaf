"""The zygote, for real: a request it does not take is refused with a message that names it."""

from __future__ import annotations

from typing import cast

import pytest

from agent.runtime import messages as m
from agent.runtime.zygote_client import Zygote


@pytest.mark.root   # (as root its spare child clones the next init's namespaces ahead)
def test_a_real_zygote_refuses_a_request_it_does_not_take_and_names_it() -> None:
    # A shim-to-init message sent to the zygote as a request: answered with Failed, not a hang.
    z = Zygote()
    try:
        reply = z.request(cast(m.Start, m.Ready()))
        try:
            sock = reply.sock
            sock.setblocking(True)
            sock.settimeout(10)
            msg, _ = m.recv(sock, m.Failed)
        finally:
            reply.close()
        assert isinstance(msg, m.Failed)
        assert "unexpected message 'ready'; expected start or exec" in msg.error
    finally:
        z.stop()
