"""Restart policies (agent/restart.py): a table of state and policy -> restart or not, and the backoff."""

from __future__ import annotations

import pytest

from agent.model import ContainerState, RestartPolicy
from agent.restart import BACKOFF_MAX, backoff, should_restart

TABLE = [
    # (name, policy, exit code, restarts so far, stopped by user, pulling, want)
    ("no", RestartPolicy("no"), 1, 0, False, False, False),
    ("always after success", RestartPolicy("always"), 0, 5, False, False, True),
    ("always, stopped by the user", RestartPolicy("always"), 137, 0, True, False, False),
    ("unless-stopped", RestartPolicy("unless-stopped"), 0, 0, False, False, True),
    ("unless-stopped, stopped", RestartPolicy("unless-stopped"), 0, 0, True, False, False),
    ("on-failure after success", RestartPolicy("on-failure"), 0, 0, False, False, False),
    ("on-failure, no limit", RestartPolicy("on-failure"), 1, 99, False, False, True),
    ("on-failure:2, once so far", RestartPolicy("on-failure", 2), 1, 1, False, False, True),
    ("on-failure:2, twice so far", RestartPolicy("on-failure", 2), 1, 2, False, False, False),
    ("always, pages still pulled", RestartPolicy("always"), 1, 0, False, True, False),
]


@pytest.mark.parametrize(("name", "policy", "code", "count", "stopped", "pulling", "want"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_should_restart(name: str, policy: RestartPolicy, code: int, count: int, stopped: bool, pulling: bool,
                        want: bool) -> None:
    state = ContainerState(status="exited", exit_code=code, restart_count=count, stopped_by_user=stopped)
    assert should_restart(state, policy, pulling=pulling) is want


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff(n) for n in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff(9) == pytest.approx(51.2)
    assert backoff(10) == backoff(1000) == BACKOFF_MAX
