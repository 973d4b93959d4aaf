"""What an agent's report of a task's container means for the task: pure, no clock, no etcd.

An agent reports each task container it holds (state, exit code, error, times, health); the
scheduler turns that into the task's observed state here and writes it with a guarded transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.model import DesiredState, Task, TaskState

LIVE_CONTAINER = frozenset({"running", "paused", "restarting"})
GONE_CONTAINER = frozenset({"exited", "dead", "removed"})


@dataclass(frozen=True, slots=True)
class ContainerReport:
    task_id: str
    service: str
    container_id: str
    state: str  # created | running | paused | restarting | exited | dead | removed
    exit_code: int = 0
    error: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    healthy: bool | None = None


def observed(task: Task, r: ContainerReport, now: float) -> Task | None:
    """`task` as its container says it is, or None when that changes nothing.

    A finished task never comes back to life (the slot gets a new task instead), and a task wanted
    stopped whose container ended is `shutdown`, not failed: it was asked to stop.
    """
    if task.state.terminal:
        return None
    if r.state == "created":
        state = TaskState.STARTING
    elif r.state in LIVE_CONTAINER:
        state = TaskState.RUNNING
    elif r.state in GONE_CONTAINER:
        if task.desired_state is DesiredState.SHUTDOWN:
            state = TaskState.SHUTDOWN
        elif r.state == "removed" or (r.error and not r.started_at):
            state = TaskState.REJECTED if r.state != "removed" else TaskState.FAILED
        elif r.exit_code == 0 and r.state == "exited":
            state = TaskState.COMPLETE
        else:
            state = TaskState.FAILED
    else:
        return None
    changes: dict[str, object] = {}
    if state is not task.state:
        changes["state"] = state
        changes["state_at"] = r.finished_at if state.terminal and r.finished_at else now
    if r.container_id and r.container_id != task.container_id:
        changes["container_id"] = r.container_id
    if state is TaskState.RUNNING and not task.started_at:
        changes["started_at"] = r.started_at or now
    if state.terminal:
        code = None if r.state == "removed" else r.exit_code
        if code != task.exit_code:
            changes["exit_code"] = code
        error = r.error or _why(state, r)
        if error != task.error and state is not TaskState.SHUTDOWN:
            changes["error"] = error
    health = r.healthy if state is TaskState.RUNNING else task.healthy
    if health != task.healthy:
        changes["healthy"] = health
    return task.with_(**changes) if changes else None


def _why(state: TaskState, r: ContainerReport) -> str:
    if r.state == "removed":
        return "the container is gone from its node"
    if state is TaskState.FAILED:
        if r.healthy is False:
            return f"unhealthy; exit code {r.exit_code}"
        return f"task: non-zero exit ({r.exit_code})"
    return ""
