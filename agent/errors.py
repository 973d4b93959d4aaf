"""The agent's one error family: every error the agent raises on purpose is one of these kinds, and
agent/status.py maps each kind to one gRPC status code (agent/dockerapi/router.py to one HTTP
status). A subsystem's own errors (agent/images/errors.py, the registry's, the builder's) subclass
the kind they are, so a servicer needs no table of its own and nothing is reported as a bug (500,
INTERNAL) that is the client's doing. This module imports nothing, so any package may use it.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's errors; the servicer maps each subclass to one gRPC status code."""


class NotFound(AgentError):
    pass


class Conflict(AgentError):
    pass


class InvalidArgument(AgentError):
    pass


class Unavailable(AgentError):
    pass


class Forbidden(AgentError):
    """A verified peer asked for what its grant does not cover (agent/authz.py)."""


class StartFailed(AgentError):
    """The container's process could not be started; exit_code is docker's (127: no such command)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
