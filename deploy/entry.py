"""The `dockyard` process: answers --version itself, sends the common one-host commands to their
fast versions (FAST: no click, grpc or protobuf imported), and everything else, or whatever a fast
command gives back, to click (deploy/cli.py).

The installed command is a launcher (deploy/launcher.py) that starts Python with -I -S and calls
main(): site and its .pth files cost about as much as the interpreter itself here.

Whole-process figures on this 2-core machine (BENCHMARKS.md): the interpreter alone ~12 ms, click
~30 ms, protobuf with agent.proto ~40 ms, grpc ~75 ms of CPU. So a command in FAST imports only
deploy.cli_local and what it imports; tests/kernel/test_cli_startup.py keeps it so.
"""

import sys

TYPE_CHECKING = False  # typing is not imported either: every import here is paid by every command
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

VERSION = "0.1.0"
DEFAULT_HOST = "unix:///run/dockyard/agent.sock"  # common.settings.AGENT_SOCKET: not imported (tomllib,
# typing); tests/kernel/test_cli_startup.py checks that they agree

# command -> its fast version, deploy/cli_local.py's function of that name: (host, argv after the
# command) -> exit status, or None to let click run the command.
FAST = ("run", "create", "ps", "start", "stop", "kill", "rm")
# image commands -> deploy/cli_local_images.py's function of that name, the same way
FAST_IMAGES = {"build": "build", "save": "save", "load": "load", "import": "import_", "pull": "pull"}
# docker's group forms of the same commands (deploy/cli_groups.py): `container run` is `run`
GROUPED = {"container": {**{c: c for c in FAST}, "ls": "ps", "list": "ps"},
           "image": {c: c for c in FAST_IMAGES}}


def _split(argv: "Sequence[str]") -> "tuple[str, str, list[str]] | None":
    """(host, command, its argv) when only -H/--host comes before the command, else None."""
    import os

    host = os.environ.get("DOCKYARD_HOST") or DEFAULT_HOST
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-H", "--host") and i + 1 < len(argv):
            host, i = argv[i + 1], i + 2
        elif a.startswith("--host="):
            host, i = a.removeprefix("--host="), i + 1
        elif a.startswith("-"):
            return None
        else:
            return host, a, list(argv[i + 1:])
    return None


def main(argv: "Sequence[str] | None" = None, click_main: "Callable[..., object] | None" = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        sys.stdout.write(f"dockyard, version {VERSION}\n")
        return 0
    split = _split(args)
    if split is not None and split[1] in GROUPED and split[2] and split[2][0] in GROUPED[split[1]]:
        split = (split[0], GROUPED[split[1]][split[2][0]], split[2][1:])
    if split is not None and (split[1] in FAST or split[1] in FAST_IMAGES):
        host, command, rest = split
        if command in FAST:
            from deploy import cli_local
        else:
            from deploy import cli_local_images as cli_local  # type: ignore[no-redef]

            command = FAST_IMAGES[command]
        try:
            code = getattr(cli_local, command)(host, rest)
        except BrokenPipeError:
            import os

            # as click does: no traceback when the reader of our output went away (`ps | head`)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        if code is not None:
            return int(code)
    if click_main is None:
        from deploy import cli

        click_main = cli.main
    click_main(args=args, prog_name="dockyard")  # click exits itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
