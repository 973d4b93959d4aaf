"""The options of the commands that start fast (deploy/entry.py), as plain data, and a parser of
docker's option grammar for them that imports nothing heavy.

Each table here is the one definition of its options: deploy/cli.py turns it into click options
(`click_options`), for --help and for every argv the fast parser gives up on, and deploy/cli_local.py
parses argv with it directly. The fast parser accepts only what it is sure click would accept the
same way; anything else (--help, an unknown option, a missing value, a bad number) raises
`Unsupported` and the command goes through click, which reports the error in its usual words.

A new option of `run`/`create`: add it to CONTAINER, and its field to deploy/containers.py.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~4 ms of a fast command's start: only for mypy (deploy/entry.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any



class Unsupported(Exception):
    """The fast parser is not sure of this argv: let click parse it."""


class Opt:
    """One option (a plain class: dataclasses imports inspect, typing.NamedTuple typing)."""

    __slots__ = ("choices", "decls", "default", "dest", "flag", "help", "multiple", "type")

    def __init__(self, decls: tuple[str, ...], dest: str, help: str, default: Any, flag: bool, multiple: bool,
                 type: type, choices: tuple[str, ...] = ()) -> None:
        self.decls = decls        # "-e", "--env"
        self.dest = dest          # the name the command's function gets the value under
        self.help = help
        self.default = default
        self.flag = flag
        self.multiple = multiple
        self.type = type          # str or int
        self.choices = choices    # the values allowed, when only some are


def opt(*decls: str, dest: str = "", help: str = "", default: Any = "", flag: bool = False,
        multiple: bool = False, type: type = str, choices: tuple[str, ...] = ()) -> Opt:
    name = dest or max(decls, key=len).lstrip("-").replace("-", "_")
    if flag:
        default = False
    elif multiple:
        default = ()
    return Opt(tuple(decls), name, help, default, flag, multiple, type, choices)


CONTAINER: tuple[Opt, ...] = (
    opt("--name", help="Assign a name to the container"),
    opt("-e", "--env", multiple=True, help="Set environment variables"),
    opt("--env-file", multiple=True, help="Read in a file of environment variables"),
    opt("-w", "--workdir", help="Working directory inside the container"),
    opt("-u", "--user", help="Username or UID (format: <name|uid>[:<group|gid>])"),
    opt("-h", "--hostname", help="Container host name"),
    opt("--entrypoint", default=None, help="Overwrite the default ENTRYPOINT of the image"),
    opt("--init", flag=True, help="Run an init inside the container that forwards signals and reaps processes"),
    opt("-i", "--interactive", flag=True, help="Keep STDIN open even if not attached"),
    opt("-t", "--tty", flag=True, help="Allocate a pseudo-TTY"),
    opt("-p", "--publish", multiple=True, help="Publish a container's port(s) to the host"),
    opt("-m", "--memory", help="Memory limit"),
    opt("--memory-swap", help="Swap limit equal to memory plus swap: '-1' to enable unlimited swap"),
    opt("--cpus", help="Number of CPUs"),
    opt("-c", "--cpu-shares", type=int, default=0, help="CPU shares (relative weight)"),
    opt("--pids-limit", type=int, default=0, help="Tune container pids limit (-1 for unlimited)"),
    opt("--blkio-weight", type=int, default=0, help="Block IO (relative weight), between 10 and 1000"),
    opt("--device-read-bps", multiple=True, help="Limit read rate (bytes per second) from a device"),
    opt("--device-write-bps", multiple=True, help="Limit write rate (bytes per second) to a device"),
    opt("--cpuset-cpus", help="CPUs in which to allow execution (0-3, 0,1)"),
    opt("--cpuset-mems", help="MEMs in which to allow execution (0-3, 0,1)"),
    opt("--memory-swappiness", type=int, default=-1, help="Tune container memory swappiness (0 to 100), cgroup v1"),
    opt("--cgroupns", dest="cgroupns_mode", help="Cgroup namespace to use (host|private)"),
    opt("--uts", dest="uts_mode", help="UTS namespace to use (host)"),
    opt("--device-cgroup-rule", dest="device_cgroup_rules", multiple=True,
        help="Add a rule to the cgroup allowed devices list ('c 1:3 rwm')"),
    opt("--network", "--net", dest="network", default="bridge",
        help="Connect a container to a network: bridge, none, host"),
    opt("--pid", dest="pid_mode", help="PID namespace to use"),
    opt("--ipc", dest="ipc_mode", help="IPC mode to use"),
    opt("--userns", dest="userns_mode", help="User namespace to use (remap, host)"),
    opt("--restart", default="no", help="Restart policy to apply when a container exits"),
    opt("--rm", dest="auto_remove", flag=True, help="Automatically remove the container when it exits"),
    opt("-l", "--label", multiple=True, help="Set meta data on a container"),
    opt("--stop-timeout", type=int, default=0, help="Timeout (in seconds) to stop a container"),
    opt("--stop-signal", help="Signal to stop the container"),
    opt("--security-opt", multiple=True,
        help="Security options: seccomp=unconfined|builtin, no-new-privileges[=true|false]"),
    opt("--device", multiple=True, help="Add a host device to the container (HOST[:CONTAINER][:rwm])"),
    opt("--privileged", flag=True, help="Give extended privileges to this container"),
    # volumes and the rest of docker run (deploy/containers.py reads them; agent/volumes, agent/hostconfig.py)
    opt("-v", "--volume", dest="volumes", multiple=True,
        help="Bind mount a volume: NAME:/path[:ro], /host:/path[:ro|rw,z,Z,rprivate], or /path"),
    opt("--mount", dest="mounts", multiple=True,
        help="Attach a filesystem mount: type=volume|bind|tmpfs,src=...,dst=...[,readonly]"),
    opt("--tmpfs", multiple=True, help="Mount a tmpfs directory: /path[:size=64m,mode=1777,...]"),
    opt("--read-only", flag=True, help="Mount the container's root filesystem as read only"),
    opt("--cap-add", multiple=True, help="Add Linux capabilities (or ALL)"),
    opt("--cap-drop", multiple=True, help="Drop Linux capabilities (or ALL)"),
    opt("--ulimit", dest="ulimits", multiple=True, help="Ulimit options: NAME=SOFT[:HARD]"),
    opt("--dns", multiple=True, help="Set custom DNS servers"),
    opt("--dns-search", multiple=True, help="Set custom DNS search domains"),
    opt("--dns-option", dest="dns_options", multiple=True, help="Set DNS options"),
    opt("--add-host", dest="add_hosts", multiple=True, help="Add a custom host-to-IP mapping (host:ip)"),
    opt("--sysctl", dest="sysctls", multiple=True, help="Sysctl options: KEY=VALUE (namespaced ones)"),
    opt("--shm-size", help="Size of /dev/shm"),
    opt("--group-add", multiple=True, help="Add additional groups to join"),
    opt("--cidfile", help="Write the container ID to the file"),
    opt("--label-file", multiple=True, help="Read in a line delimited file of labels"),
    opt("--health-cmd", default=None, help="Command to run to check health"),
    opt("--health-interval", help="Time between running the check (ms|s|m|h)"),
    opt("--health-timeout", help="Maximum time to allow one check to run (ms|s|m|h)"),
    opt("--health-retries", type=int, default=0, help="Consecutive failures needed to report unhealthy"),
    opt("--health-start-period", help="Start period for the container to initialize"),
    opt("--health-start-interval", help="Time between checks during the start period"),
    opt("--no-healthcheck", flag=True, help="Disable any container-specified HEALTHCHECK"),
    opt("--log-driver", help="Logging driver for the container: json-file, local, none (default: the agent's)"),
    opt("--log-opt", dest="log_opts", multiple=True, help="Log driver options: max-size=10m, max-file=3, compress=true"),
)

RUN: tuple[Opt, ...] = (
    *CONTAINER,
    opt("-d", "--detach", flag=True, help="Run container in background and print container ID"),
)

PS: tuple[Opt, ...] = (
    opt("-a", "--all", dest="all_", flag=True, help="Show all containers (default shows just running)"),
    opt("-q", "--quiet", flag=True, help="Only display container IDs"),
    opt("--no-trunc", flag=True, help="Don't truncate output"),
    opt("-f", "--filter", dest="filters", multiple=True, help="Filter output (name=, status=, label=)"),
    opt("--format", dest="fmt", help="'json' to print JSON"),
)


START: tuple[Opt, ...] = (
    opt("-a", "--attach", flag=True, help="Attach STDOUT/STDERR and forward signals"),
    opt("-i", "--interactive", flag=True, help="Attach container's STDIN"),
)

STOP: tuple[Opt, ...] = (
    opt("-t", "--time", dest="timeout", type=int, default=-1, help="Seconds to wait before killing the container"),
)

KILL: tuple[Opt, ...] = (opt("-s", "--signal", dest="sig", default="KILL", help="Signal to send to the container"),)

# docker update's flags that dockyard has (None: not given, so left as it is).
UPDATE: tuple[Opt, ...] = (
    opt("-m", "--memory", help="Memory limit"),
    opt("--memory-swap", help="Swap limit equal to memory plus swap: '-1' to enable unlimited swap"),
    opt("--cpus", help="Number of CPUs"),
    opt("-c", "--cpu-shares", type=int, default=None, help="CPU shares (relative weight)"),
    opt("--pids-limit", type=int, default=None, help="Tune container pids limit (-1 for unlimited)"),
    opt("--blkio-weight", type=int, default=None, help="Block IO (relative weight), between 10 and 1000"),
    opt("--restart", help="Restart policy to apply when a container exits"),
)

RM: tuple[Opt, ...] = (
    opt("-f", "--force", flag=True, help="Force the removal of a running container (uses SIGKILL)"),
    opt("-v", "--volumes", flag=True, help="Remove anonymous volumes associated with the container"),
)


# The image commands with a fast version (deploy/cli_local_images.py): no click, grpc or protobuf.
BUILD: tuple[Opt, ...] = (
    opt("-t", "--tag", dest="tags", multiple=True, help="Name and optionally a tag (name:tag)"),
    opt("-f", "--file", dest="file", help="Name of the Dockerfile (default: CONTEXT/Dockerfile)"),
    opt("--build-arg", dest="build_args", multiple=True, help="Set build-time variables (K=V)"),
    opt("--no-cache", flag=True, help="Do not use cache when building the image"),
    opt("--target", help="Set the target build stage to build"),
    opt("--network", help="Networking mode for the RUN instructions (bridge, none, host)"),
    opt("--label", dest="labels", multiple=True, help="Set metadata for an image (K=V)"),
    opt("-q", "--quiet", flag=True, help="Suppress the build output and print image ID on success"),
)

SAVE: tuple[Opt, ...] = (
    opt("-o", "--output", help="Write to a file, instead of STDOUT"),
    opt("--format", dest="fmt", default="docker", choices=("docker", "oci"),
        help="docker-archive (docker load reads it) or an OCI image layout"),
)

LOAD: tuple[Opt, ...] = (
    opt("-i", "--input", dest="input_", help="Read from tar archive file, instead of STDIN"),
    opt("-q", "--quiet", flag=True, help="Suppress the load output"),
)

PULL: tuple[Opt, ...] = (opt("-q", "--quiet", flag=True, help="Suppress verbose output"),)

IMPORT: tuple[Opt, ...] = (
    opt("-c", "--change", multiple=True, help="Apply Dockerfile instruction to the created image"),
    opt("-m", "--message", help="Set commit message for imported image"),
)


def click_options(opts: Sequence[Opt]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The table as click options, in the same order (for a click command's decorators)."""
    import click

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for o in reversed(opts):
            kw: dict[str, Any] = {"help": o.help}
            if o.flag:
                kw["is_flag"] = True
            elif o.multiple:
                kw["multiple"] = True
            else:
                kw["default"] = o.default
                if o.type is not str:
                    kw["type"] = o.type
                if o.choices:
                    kw["type"], kw["show_default"] = click.Choice(list(o.choices)), True
            f = click.option(*o.decls, o.dest, **kw)(f)
        return f

    return decorate


def parse(opts: Sequence[Opt], argv: Sequence[str], interspersed: bool = True) -> tuple[dict[str, Any], list[str]]:
    """(the options' values by dest, the positional arguments), as click would give them; with
    interspersed=False everything after the first positional argument is positional (`run IMAGE
    CMD -x`). Raises Unsupported where click might differ or would report an error."""
    by_flag = {d: o for o in opts for d in o.decls}
    values: dict[str, Any] = {o.dest: o.default for o in opts}
    many: dict[str, list[str]] = {o.dest: [] for o in opts if o.multiple}
    args: list[str] = []
    i = 0

    def take(o: Opt, value: str) -> None:
        if o.multiple:
            many[o.dest].append(value)
        elif o.type is int:
            if not value.lstrip("-").isdigit():
                raise Unsupported(value)
            values[o.dest] = int(value)
        elif o.choices and value not in o.choices:
            raise Unsupported(value)  # click says which are allowed
        else:
            values[o.dest] = value

    def value_after(o: Opt) -> str:
        nonlocal i
        i += 1
        if i >= len(argv):
            raise Unsupported(f"{o.decls[-1]} needs a value")
        return argv[i]

    while i < len(argv):
        a = argv[i]
        if a == "--":
            args += argv[i + 1:]
            break
        if a.startswith("--"):
            name, eq, val = a.partition("=")
            o = by_flag.get(name)
            if o is None or (o.flag and eq):
                raise Unsupported(a)
            if o.flag:
                values[o.dest] = True
            else:
                take(o, val if eq else value_after(o))
        elif a.startswith("-") and len(a) > 1:
            for j in range(1, len(a)):
                o = by_flag.get("-" + a[j])
                if o is None:
                    raise Unsupported(a)
                if o.flag:
                    values[o.dest] = True
                    continue
                take(o, a[j + 1:] if j + 1 < len(a) else value_after(o))
                break
        else:
            if not interspersed:
                args += argv[i:]
                break
            args.append(a)
        i += 1
    for dest, vs in many.items():
        values[dest] = tuple(vs)
    return values, args
