"""docker's three spellings of a container's mounts, parsed into one type (model.Mount) and checked.

    -v NAME:/path[:opts]   -v /host:/path[:opts]   -v /path
        (opts: ro rw z Z nocopy, and for binds a propagation: [r]private [r]shared [r]slave)
    --mount type=volume|bind|tmpfs,src=...,dst=...,readonly,volume-opt=k=v,tmpfs-size=64m,...
    --tmpfs /run[:size=64m,mode=1777,noexec,...]

The parsers are pure (the CLI and the stack loader call them); `check` is what the agent applies
to every container config it is given, whoever built it: the boundary. Every error names the spec
and what is wrong with it.
"""

from __future__ import annotations

import os
import re

from agent.model import InvalidArgument, Mount

MAX_VOLUME_NAME = 200
VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_ALL_PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
# tmpfs: docker's allowed flags, and the key=value options the kernel's tmpfs takes.
_TMPFS_FLAGS = {"ro", "rw", "noexec", "exec", "nosuid", "suid", "nodev", "dev", "sync", "async", "dirsync",
                "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime",
                "nostrictatime"}
_TMPFS_KEYS = {"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol"}
TMPFS_DEFAULT_FLAGS = ["noexec", "nosuid", "nodev"]   # docker's, unless the spec says otherwise
_SIZE = re.compile(r"^(\d+)([kmgt]?)b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str, what: str) -> int:
    m = _SIZE.match(value.strip())
    if not m:
        raise InvalidArgument(f"{what}: invalid size {value!r} (a number with an optional k, m, g or t suffix)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def selinux_enabled() -> bool:
    return os.path.exists("/sys/fs/selinux/enforce")


# --- -v / --volume ---------------------------------------------------------------------------------

def parse_volume(spec: str) -> Mount:
    """-v, as docker's Linux parser reads it."""
    parts = spec.split(":")
    if not spec or len(parts) > 3 or any(p == "" for p in parts):
        raise InvalidArgument(f"invalid volume specification: {spec!r}")
    mode = ""
    if len(parts) == 1:
        source, target = "", parts[0]
    elif len(parts) == 2:
        if _valid_mode(parts[1]):  # /foo:ro: a volume needs a source to take a mode
            raise InvalidArgument(f"invalid volume specification: {spec!r}: a mode needs SOURCE:TARGET:MODE")
        source, target = parts
    else:
        source, target, mode = parts
    m = Mount(target=target, origin="-v", spec=spec)
    if not source:
        m.type, m.anonymous = "volume", True
    elif source.startswith("/"):
        m.type, m.source, m.create_source = "bind", source, True
    elif source.startswith("."):
        raise InvalidArgument(f"invalid volume specification: {spec!r}: the host path {source!r} is relative "
                              "(give an absolute path, or a volume name)")
    else:
        m.type, m.source = "volume", source
    rw_seen = False
    for opt in filter(None, mode.split(",")):
        if opt in ("ro", "rw"):
            if rw_seen:
                raise InvalidArgument(f"invalid mode {mode!r} in {spec!r}: ro and rw given twice")
            rw_seen, m.readonly = True, opt == "ro"
        elif opt in ("z", "Z"):
            if m.selinux:
                raise InvalidArgument(f"invalid mode {mode!r} in {spec!r}: z and Z given twice")
            m.selinux = opt
        elif opt in _ALL_PROPAGATIONS:
            if m.propagation:
                raise InvalidArgument(f"invalid mode {mode!r} in {spec!r}: two propagation modes")
            m.propagation = opt
        elif opt == "nocopy":
            m.nocopy = True
        else:
            raise InvalidArgument(f"invalid mode {opt!r} in volume specification {spec!r}")
    return m


def _valid_mode(text: str) -> bool:
    return all(o in ("ro", "rw", "z", "Z", "nocopy", *_ALL_PROPAGATIONS) for o in text.split(","))


# --- --mount ---------------------------------------------------------------------------------------

def _bool(value: str | None, key: str, spec: str) -> bool:
    if value is None or value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise InvalidArgument(f"invalid value for {key} in --mount {spec!r}: {value!r} (true or false)")


def parse_mount(spec: str) -> Mount:
    """--mount: comma-separated key=value fields, as docker's (no CSV quoting)."""
    m = Mount(type="volume", origin="--mount")
    typed = False
    fields: list[tuple[str, str | None]] = []
    for field in spec.split(","):
        if not field:
            continue
        key, eq, raw = field.partition("=")
        fields.append((key.strip().lower(), raw if eq else None))
    for key, tvalue in fields:  # the type first: the other keys depend on it
        if key == "type":
            if tvalue is None or tvalue not in ("volume", "bind", "tmpfs"):
                raise InvalidArgument(f"--mount {spec!r}: type must be volume, bind or tmpfs, not {tvalue!r}")
            m.type, typed = tvalue, True
    if not typed:
        m.type = "volume"
    size = mode = ""
    for key, ovalue in fields:
        if key == "type":
            continue
        if key in ("readonly", "ro"):
            m.readonly = _bool(ovalue, key, spec)
            continue
        if ovalue is None:
            raise InvalidArgument(f"--mount {spec!r}: {key!r} needs a value ({key}=...)")
        value: str = ovalue
        if key in ("source", "src"):
            m.source = value
        elif key in ("target", "destination", "dst"):
            m.target = value
        elif key == "bind-propagation" and m.type == "bind":
            m.propagation = value
        elif key == "volume-nocopy" and m.type == "volume":
            m.nocopy = _bool(value, key, spec)
        elif key == "volume-driver" and m.type == "volume":
            m.volume_driver = value
        elif key in ("volume-label", "volume-opt") and m.type == "volume":
            k, eq, v = value.partition("=")
            if not eq or not k:
                raise InvalidArgument(f"--mount {spec!r}: {key} must be KEY=VALUE, not {value!r}")
            (m.volume_labels if key == "volume-label" else m.volume_options)[k] = v
        elif key == "tmpfs-size" and m.type == "tmpfs":
            size = value
        elif key == "tmpfs-mode" and m.type == "tmpfs":
            mode = value
        else:
            raise InvalidArgument(f"--mount {spec!r}: unexpected key {key!r} for a {m.type} mount")
    if m.type == "volume" and not m.source:
        m.anonymous = True
    if m.type == "tmpfs":
        if m.source:
            raise InvalidArgument(f"--mount {spec!r}: a tmpfs has no source")
        opts = list(TMPFS_DEFAULT_FLAGS)
        if size:
            opts.append(f"size={parse_size(size, f'--mount {spec!r}: tmpfs-size')}")
        if mode:
            opts.append(f"mode={mode}")
        m.tmpfs_options = opts
    return m


# --- --tmpfs ---------------------------------------------------------------------------------------

def parse_tmpfs(spec: str) -> Mount:
    target, _, opts = spec.partition(":")
    options = list(TMPFS_DEFAULT_FLAGS)
    for opt in filter(None, opts.split(",")):
        options.append(opt)
    return Mount(type="tmpfs", target=target, tmpfs_options=options, origin="--tmpfs", spec=spec)


# --- back in docker's words (inspect) ---------------------------------------------------------------

def docker_spelling(mounts: list[Mount]) -> dict[str, object]:
    """HostConfig's Binds, Mounts and Tmpfs as the user gave them (docker inspect echoes its input);
    mounts nobody asked for by name (an image's VOLUME, a --volumes-from copy) are in none of them."""
    binds: list[str] = []
    tmpfs: dict[str, str] = {}
    objs: list[dict[str, object]] = []
    for m in mounts:
        if m.origin == "--mount":
            o: dict[str, object] = {"Type": m.type, "Source": m.source, "Target": m.target, "ReadOnly": m.readonly}
            if m.propagation:
                o["BindOptions"] = {"Propagation": m.propagation}
            if m.nocopy or m.volume_labels or m.volume_options or m.volume_driver:
                o["VolumeOptions"] = {"NoCopy": m.nocopy, "Labels": dict(m.volume_labels) or None,
                                      "DriverConfig": {"Name": m.volume_driver or "local",
                                                       "Options": dict(m.volume_options) or None}}
            if m.type == "tmpfs":
                opts = dict(x.partition("=")[::2] for x in m.tmpfs_options)
                o["TmpfsOptions"] = {k: v for k, v in (("SizeBytes", int(opts.get("size", "0") or 0)),
                                                       ("Mode", int(opts.get("mode", "0") or "0", 8))) if v}
            objs.append(o)
        elif m.type == "tmpfs" and m.origin in ("--tmpfs", ""):
            tmpfs[m.target] = m.spec.partition(":")[2] if m.spec else ",".join(m.tmpfs_options)
        elif m.origin == "-v" and m.spec and not m.anonymous:   # `-v /path` is Config.Volumes
            binds.append(m.spec)
        elif m.origin == "" and not m.anonymous:   # a container made before origin was recorded
            binds.append(f"{m.source}:{m.target}" + (":ro" if m.readonly else ""))
    return {"Binds": binds or None, "Mounts": objs or None, "Tmpfs": tmpfs or None}


# --- the agent's check -----------------------------------------------------------------------------

def _describe(m: Mount) -> str:
    src = f"{m.source}:" if m.source else ""
    return f"{m.type} mount {src}{m.target}"


def check_target(path: str, what: str) -> None:
    if not path:
        raise InvalidArgument(f"{what}: the target (container path) is missing")
    if not path.startswith("/"):
        raise InvalidArgument(f"{what}: the target {path!r} is not an absolute path")
    if os.path.normpath(path) == "/":
        raise InvalidArgument(f"{what}: the target cannot be /")
    if any(p == ".." for p in path.split("/")):
        raise InvalidArgument(f"{what}: the target {path!r} has a '..' in it")
    if "\0" in path:
        raise InvalidArgument(f"{what}: the target has a NUL byte in it")


def normalize_tmpfs_options(options: list[str], what: str) -> list[str]:
    """Known flags and key=value options only, sizes in bytes, a mode in octal; later ones win."""
    out: dict[str, str] = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        if not eq:
            if key not in _TMPFS_FLAGS:
                raise InvalidArgument(f"{what}: unknown tmpfs option {opt!r}")
            opposite = key[2:] if key.startswith("no") and key[2:] in _TMPFS_FLAGS else "no" + key
            out.pop(opposite, None)
            if key == "ro":
                out.pop("rw", None)
            elif key == "rw":
                out.pop("ro", None)
            out[key] = ""
            continue
        if key not in _TMPFS_KEYS:
            raise InvalidArgument(f"{what}: unknown tmpfs option {opt!r}")
        if key in ("size", "nr_blocks", "nr_inodes"):
            if key == "size" and value.endswith("%") and value[:-1].isdigit():
                pass
            else:
                value = str(parse_size(value, f"{what}: {key}"))
        elif key == "mode":
            if not re.fullmatch(r"[0-7]{1,4}", value):
                raise InvalidArgument(f"{what}: mode {value!r} is not an octal file mode")
        elif key in ("uid", "gid") and not value.isdigit():
            raise InvalidArgument(f"{what}: {key} {value!r} is not a number")
        out[key] = value
    return [k if v == "" and k in _TMPFS_FLAGS else f"{k}={v}" for k, v in out.items()]


def check(m: Mount) -> None:
    """One mount, as the agent accepts it (InvalidArgument naming the mount otherwise)."""
    what = _describe(m)
    if m.type not in ("volume", "bind", "tmpfs"):
        raise InvalidArgument(f"mount type {m.type!r} for {m.target!r}: must be volume, bind or tmpfs")
    check_target(m.target, what)
    if m.propagation:
        if m.type != "bind":
            raise InvalidArgument(f"{what}: propagation ({m.propagation}) applies to bind mounts only")
        if m.propagation not in _ALL_PROPAGATIONS:
            raise InvalidArgument(f"{what}: invalid propagation {m.propagation!r} (one of "
                                  f"{', '.join(_ALL_PROPAGATIONS)})")
    if m.selinux:
        if m.selinux not in ("z", "Z"):
            raise InvalidArgument(f"{what}: invalid SELinux relabel {m.selinux!r} (z or Z)")
        if m.type == "tmpfs":
            raise InvalidArgument(f"{what}: z and Z apply to volumes and bind mounts only")
        if selinux_enabled():
            raise InvalidArgument(f"{what}: SELinux is enabled on this host, and dockyard cannot relabel "
                                  f"({m.selinux}) yet")
    if m.type == "bind":
        if not m.source.startswith("/"):
            raise InvalidArgument(f"{what}: the bind source {m.source!r} must be an absolute host path")
        if any(p == ".." for p in m.source.split("/")):
            raise InvalidArgument(f"{what}: the bind source {m.source!r} has a '..' in it")
        if m.nocopy or m.tmpfs_options or m.volume_options or m.volume_labels or m.volume_driver or m.external:
            raise InvalidArgument(f"{what}: volume and tmpfs options do not apply to a bind mount")
    elif m.type == "volume":
        if m.anonymous and m.source and not VOLUME_NAME.match(m.source):
            raise InvalidArgument(f"{what}: invalid anonymous volume name {m.source!r}")
        if not m.anonymous:
            check_volume_name(m.source)
        if m.tmpfs_options or m.create_source:
            raise InvalidArgument(f"{what}: tmpfs and bind options do not apply to a volume")
        if m.external and (m.anonymous or m.volume_options or m.volume_labels):
            raise InvalidArgument(f"{what}: an external volume is named, and has no options or labels of its own")
        if m.volume_driver not in ("", "local"):
            raise InvalidArgument(f"{what}: volume driver {m.volume_driver!r} not found (only local)")
    else:
        if m.source:
            raise InvalidArgument(f"{what}: a tmpfs has no source")
        if m.nocopy or m.volume_options or m.volume_labels or m.volume_driver or m.create_source or m.external:
            raise InvalidArgument(f"{what}: volume and bind options do not apply to a tmpfs")
        m.tmpfs_options = normalize_tmpfs_options(m.tmpfs_options, what)


def check_volume_name(name: str) -> None:
    if not name:
        raise InvalidArgument("a volume name is required")
    if not VOLUME_NAME.match(name):
        raise InvalidArgument(f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, "
                              "and at least two characters")
    if len(name) > MAX_VOLUME_NAME:   # a directory of that name, and its temporary ".NAME.XXXXXXXX" siblings
        raise InvalidArgument(f"invalid volume name {name[:20]}...: {len(name)} characters, at most {MAX_VOLUME_NAME}")


def check_all(mounts: list[Mount]) -> None:
    seen: set[str] = set()
    for m in mounts:
        check(m)
        target = os.path.normpath(m.target)
        if target in seen:
            raise InvalidArgument(f"duplicate mount point: {target}")
        seen.add(target)


def from_flags(volumes: list[str], mounts: list[str], tmpfs: list[str]) -> list[Mount]:
    """The CLI's -v, --mount and --tmpfs as the user typed them (ContainerConfig.volume_flags ...),
    parsed and checked here, in the agent: the error names the flag."""
    out = []
    for flag, items, parse in (("-v/--volume", volumes, parse_volume), ("--mount", mounts, parse_mount),
                               ("--tmpfs", tmpfs, parse_tmpfs)):
        for spec in items:
            try:
                m = parse(spec)
                check(m)
            except InvalidArgument as e:
                raise InvalidArgument(f"invalid value for {flag}: {e}") from None
            out.append(m)
    return out


def check_source_propagation(m: Mount, mountinfo: str = "/proc/self/mountinfo") -> None:
    """docker's rule for a bind's shared or slave propagation: the host mount its source lies on
    must be shared (for [r]shared) or shared or a slave (for [r]slave), else nothing could propagate
    and the option would be a no-op. Read from this process's mount table (the agent's, the host's)."""
    if m.type != "bind" or m.propagation not in ("shared", "rshared", "slave", "rslave"):
        return
    path = os.path.realpath(m.source)
    best, fields = "", ""
    with open(mountinfo) as f:
        for line in f:
            parts = line.split(" - ")[0].split()
            point = parts[4].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fields = point, " ".join(parts[6:])
    shared, slave = "shared:" in fields, "master:" in fields
    if m.propagation.endswith("shared") and not shared:
        raise InvalidArgument(f"{_describe(m)}: path {m.source} is mounted on {best} but it is not a shared mount "
                              f"(make it one: mount --make-shared {best})")
    if m.propagation.endswith("slave") and not (shared or slave):
        raise InvalidArgument(f"{_describe(m)}: path {m.source} is mounted on {best} but it is not a shared or "
                              f"slave mount (make it one: mount --make-shared {best})")
