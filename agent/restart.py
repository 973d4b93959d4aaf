"""Restart policies, as docker has them: whether an exited container runs again and how long it
waits first. Pure functions of the container's state and policy; the manager (containers.py) acts.

- ``no``: never. ``always``, ``unless-stopped``: unless the user stopped it.
- ``on-failure[:N]``: after a non-zero exit, at most N times (0: no limit).
- Never while its memory is still being pulled from a migration's source (post-copy): a restart
  here would run a second copy beside the one the target is finishing.
- The wait doubles from 0.1 s with each restart, up to ``BACKOFF_MAX``.
"""

from __future__ import annotations

from agent.model import ContainerState, RestartPolicy

BACKOFF_MAX = 60.0


def should_restart(state: ContainerState, policy: RestartPolicy, *, pulling: bool = False) -> bool:
    if state.stopped_by_user or pulling:
        return False
    if policy.name in ("always", "unless-stopped"):
        return True
    if policy.name == "on-failure" and state.exit_code != 0:
        return policy.max_retries == 0 or state.restart_count < policy.max_retries
    return False


def backoff(restart_count: int) -> float:
    """Seconds to wait before the next start of a container restarted ``restart_count`` times."""
    return min(BACKOFF_MAX, 0.1 * (1 << min(restart_count, 10)))
