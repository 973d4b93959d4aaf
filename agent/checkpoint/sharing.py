"""A shared bind (-v SRC:DST:rshared|shared) stays in the host source's peer group across a CRIU restore.

Why this exists: criu's mount engine (mount-v2.c, restore_one_sharing) restores a mount's *master*
from an external source (MOVE_MOUNT_SET_GROUP from the host path it was given), so rslave binds
come back right; but a *shared_id* it only re-creates with MS_SHARED, which makes a peer group of
its own. Nothing mounted on the host under SRC would reach the container any more, nor the other
way. --enable-external-sharing and --enable-external-masters only widen what `--external mnt[]`
auto-detection accepts at dump; they change nothing of this on restore.

So the restore passes criu an action script (`--action-script`). At "post-restore" (every mount and
task is in place, no task has run yet, and a failing script still aborts the restore and kills the
tree: criu only logs a failed "pre-resume") it runs `python -m agent.checkpoint.sharing`, which for
each such bind makes the restored mount private and joins it to the peer group of a fresh clone
of the host source (open_tree), exactly as a new container's bind is made (agent/runtime/mounts.py).
Any other action of criu's is a no-op. A failure fails the restore with a line naming the bind
(written to criu's restore.log, where the shim's error reads it).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from agent.runtime import syscalls as sc

HOOK_NAME = "criu-sharing.sh"


def shared(propagation: str) -> bool:
    return propagation.removeprefix("r") == "shared"


def write_hook(state_dir: str, binds: Sequence[tuple[str, str]], log_file: str) -> str:
    """The action script for a restore whose container has shared binds [(target in the container,
    host source)]; returns its path. The shell filters criu's actions so only pre-resume pays for
    Python's start (about 40 ms of the restore's downtime, and only for such containers)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = " ".join(shlex.quote(x) for pair in binds for x in pair)
    path = os.path.join(state_dir, HOOK_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("#!/bin/sh\n"
                "# criu's action script (agent/checkpoint/sharing.py): shared binds rejoin the host's peer groups\n"
                '[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0\n'
                f"PYTHONPATH={shlex.quote(root)} exec {shlex.quote(sys.executable)} -m agent.checkpoint.sharing "
                f"{args} 2>>{shlex.quote(log_file)}\n")
    os.chmod(tmp, 0o700)
    os.replace(tmp, path)
    return path


def rejoin(pid: int, binds: Sequence[tuple[str, str]]) -> None:
    """In a process of its own (it enters the tree's mount namespace): each restored bind at
    `target` in the tree of host pid `pid` becomes a peer of the host mount at `source` again."""
    held: list[tuple[str, str, int, int]] = []
    ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for target, source in binds:
            try:
                src = sc.open_tree(source, recursive=False)
            except OSError as e:
                raise OSError(e.errno, f"bind {source} at {target}: cannot open the host source: {e.strerror}") from None
            try:
                dst = os.open(f"/proc/{pid}/root/{target.lstrip('/')}", os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                os.close(src)
                raise OSError(e.errno, f"bind {source} at {target}: not found in the restored container") from None
            held.append((target, source, src, dst))
        sc.setns(ns, sc.CLONE_NEWNS)
        for target, source, src, dst in held:
            try:
                sc.set_propagation(dst, sc.MS_PRIVATE)
                sc.join_peer_group(src, dst)
            except OSError as e:
                raise OSError(e.errno, f"bind {source} at {target}: cannot rejoin the host's peer group of "
                                       f"{source} after the restore: {e.strerror}") from None
    finally:
        os.close(ns)
        for _, _, src, dst in held:
            os.close(src)
            os.close(dst)


def main(argv: Sequence[str]) -> int:
    pid = os.environ.get("CRTOOLS_INIT_PID", "")
    if not pid.isdigit() or len(argv) % 2:
        print(f"Error (dockyard sharing): usage: CRTOOLS_INIT_PID=PID {HOOK_NAME} TARGET SOURCE ...", file=sys.stderr)
        return 2
    try:
        rejoin(int(pid), list(zip(argv[0::2], argv[1::2], strict=True)))
    except OSError as e:
        print(f"Error (dockyard sharing): {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
