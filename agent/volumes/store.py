"""Named volumes on this host: docker's `local` driver.

A volume is a directory, <root>/volumes/<name>/_data (docker's layout), and a record beside it,
volume.json (driver, labels, options, created, anonymous). With docker's local-driver options
(`-o type=tmpfs -o device=tmpfs -o o=size=64m`, `-o type=none -o o=bind -o device=/srv/x`, an
NFS export...) the device is mounted on _data while a running container uses the volume, and
unmounted when the last one stops (`acquire`, `release`: the manager says who uses it).

Whether a volume is in use is the container manager's knowledge (`users`, given at wiring): a
volume that any container mounts, running or not, cannot be removed, as in docker.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.model import Conflict, InvalidArgument, NotFound
from agent.runtime import syscalls as sc
from agent.runtime.spec import write_atomic
from agent.volumes.specs import check_volume_name

LOCAL_OPTIONS = ("type", "device", "o")
# mount(8) flags in a local volume's `o`; the rest is the file system's data.
_FLAGS = {"ro": sc.MS_RDONLY, "nosuid": sc.MS_NOSUID, "nodev": sc.MS_NODEV, "noexec": sc.MS_NOEXEC,
          "bind": sc.MS_BIND, "rbind": sc.MS_BIND | sc.MS_REC, "sync": 16, "noatime": 1024,
          "nodiratime": 2048, "relatime": sc.MS_RELATIME, "strictatime": sc.MS_STRICTATIME}
_CLEARS = {"rw", "suid", "dev", "exec", "async", "atime", "diratime"}
ANONYMOUS_LABEL = "com.docker.volume.anonymous"   # as docker (23+) marks them


@dataclass
class Volume:
    name: str
    driver: str = "local"
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    anonymous: bool = False


def check_options(driver: str, options: dict[str, str]) -> None:
    if driver not in ("", "local"):
        raise InvalidArgument(f"volume driver {driver!r} not found: this host has only the local driver")
    for key in options:
        if key not in LOCAL_OPTIONS:
            raise InvalidArgument(f"invalid option {key!r} for the local volume driver "
                                  f"(it takes {', '.join(LOCAL_OPTIONS)})")
    if options and ("type" not in options or "device" not in options):
        missing = "type" if "type" not in options else "device"
        raise InvalidArgument(f"the local volume driver's options need {missing!r} too (type, device and o)")
    if "o" in options and ("bind" in options["o"].split(",") or "rbind" in options["o"].split(",")):
        if not options["device"].startswith("/"):
            raise InvalidArgument(f"a bind volume's device {options['device']!r} must be an absolute host path")
        if not os.path.isdir(options["device"]):
            raise InvalidArgument(f"a bind volume's device {options['device']} does not exist on this host")


def matches(v: Volume, in_use: bool, filters: dict[str, list[str]]) -> bool:
    """docker's volume filters (each key: any of its values; every key must hold): name (a
    substring), driver, label (KEY or KEY=VALUE), dangling (true: no container uses it)."""
    for key, values in filters.items():
        if key == "name":
            ok = any(f in v.name for f in values)
        elif key == "driver":
            ok = v.driver in values
        elif key == "label":
            ok = all(k in v.labels and (not eq or v.labels[k] == want)
                     for k, eq, want in (f.partition("=") for f in values))
        elif key == "dangling":
            for f in values:
                if f.lower() not in ("true", "false", "1", "0"):
                    raise InvalidArgument(f"invalid filter 'dangling={f}': true or false")
            ok = any(in_use != (f.lower() in ("true", "1")) for f in values)
        else:
            raise InvalidArgument(f"invalid filter '{key}'")
        if not ok:
            return False
    return True


class VolumeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True, mode=0o701)
        self._lock = threading.Lock()
        self._records: dict[str, Volume] = {}   # read once: a start looks at each of its volumes
        # Who uses a volume: ["name (status)", ...]; wired to the container manager by the daemon.
        self.users: Callable[[str], list[str]] = lambda name: []

    def _dir(self, name: str) -> Path:
        return self.root / name

    def path(self, name: str) -> Path:
        """What containers mount: the volume's data directory."""
        return self._dir(name) / "_data"

    def exists(self, name: str) -> bool:
        return name in self._records or (self._dir(name) / "volume.json").exists()

    def get(self, name: str) -> Volume:
        v = self._records.get(name)
        if v is not None:
            return v
        try:
            data = json.loads((self._dir(name) / "volume.json").read_text())
        except (OSError, ValueError):
            raise NotFound(f"no such volume: {name}") from None
        v = self._records[name] = Volume(**{k: v for k, v in data.items() if k in Volume.__dataclass_fields__})
        return v

    def list(self) -> list[Volume]:
        out = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith("."):
                continue  # one being made or removed
            with contextlib.suppress(NotFound):
                out.append(self.get(d.name))
        return out

    def create(self, name: str = "", driver: str = "local", labels: dict[str, str] | None = None,
               options: dict[str, str] | None = None, anonymous: bool = False) -> Volume:
        """A new volume, or the existing one of that name (docker's create is idempotent)."""
        options = dict(options or {})
        labels = dict(labels or {})
        check_options(driver, options)
        if not name:
            name = secrets.token_hex(32)
            anonymous = True
        check_volume_name(name)
        if anonymous:
            labels.setdefault(ANONYMOUS_LABEL, "")
        with self._lock:
            if self.exists(name):
                old = self.get(name)
                if options and old.options != options:
                    raise Conflict(f"volume {name} already exists with other options: {old.options}")
                return old
            v = Volume(name=name, driver="local", labels=labels, options=options, created=time.time(),
                       anonymous=anonymous)
            d = self._dir(name)
            tmp = self.root / f".{name}.{secrets.token_hex(4)}"
            (tmp / "_data").mkdir(parents=True, mode=0o755)
            write_atomic(tmp / "volume.json", json.dumps(asdict(v)))
            os.rename(tmp, d)   # whole or not at all
        return v

    def adopt(self, name: str, labels: dict[str, str], options: dict[str, str], anonymous: bool,
              data: Path | None) -> Volume:
        """A volume that came with a migrated container: its content (a directory unpacked on this
        file system) is moved in as the volume's data. Refused if the name is taken here."""
        check_volume_name(name)
        check_options("local", options)
        with self._lock:
            if self.exists(name):
                raise Conflict(f"volume {name} already exists on this host: remove it first (docker volume rm)")
            v = Volume(name=name, labels=dict(labels), options=dict(options), created=time.time(),
                       anonymous=anonymous)
            tmp = self.root / f".{name}.{secrets.token_hex(4)}"
            tmp.mkdir(mode=0o755)
            try:
                if data is not None:
                    os.rename(data, tmp / "_data")
                else:
                    (tmp / "_data").mkdir(mode=0o755)
                write_atomic(tmp / "volume.json", json.dumps(asdict(v)))
                os.rename(tmp, self._dir(name))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return v

    def carried(self, name: str) -> dict[str, object]:
        """What a migration archive holds of this volume: its record, and its data directory
        unless the content lives on the volume's own device (then the target mounts that)."""
        v = self.get(name)
        return {"labels": v.labels, "options": v.options, "anonymous": v.anonymous,
                "path": None if v.options else self.path(name)}

    def size(self, name: str) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.path(name)):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
        return total

    def remove(self, name: str, force: bool = False) -> None:
        """Refused while any container uses it; -f only makes a missing volume no error."""
        if not self.exists(name):
            if force:
                return
            raise NotFound(f"no such volume: {name}")
        users = self.users(name)
        if users:
            raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
        with self._lock:
            self._unmount(name)
            d = self._dir(name)
            trash = self.root / f".rm-{name}.{secrets.token_hex(4)}"
            os.rename(d, trash)   # gone from the listing at once
            self._records.pop(name, None)
        shutil.rmtree(trash, ignore_errors=True)

    def prune(self, all_: bool = False, labels: dict[str, str] | None = None) -> tuple[builtins.list[str], int]:
        """Unused volumes: anonymous ones only unless all_ (docker 23+), matching every label filter."""
        removed, space = [], 0
        for v in self.list():
            if not (all_ or v.anonymous):
                continue
            if any(k not in v.labels or (want and v.labels[k] != want) for k, want in (labels or {}).items()):
                continue
            if self.users(v.name):
                continue
            size = self.size(v.name)
            with contextlib.suppress(NotFound, Conflict):
                self.remove(v.name)
                removed.append(v.name)
                space += size
        return removed, space

    # --- the local driver's mounts ----------------------------------------------------------------

    def acquire(self, name: str) -> Path:
        """Before a container that mounts this volume starts: its device mounted, if it has one."""
        v = self.get(name)
        path = self.path(name)
        if v.options:
            with self._lock:
                if not os.path.ismount(path):
                    flags, data = 0, []
                    for opt in filter(None, v.options.get("o", "").split(",")):
                        if opt in _FLAGS:
                            flags |= _FLAGS[opt]
                        elif opt not in _CLEARS:
                            data.append(opt)
                    fstype = None if flags & sc.MS_BIND or v.options["type"] == "none" else v.options["type"]
                    try:
                        sc.mount(v.options["device"], str(path), fstype, flags, ",".join(data) or None)
                    except OSError as e:
                        raise InvalidArgument(f"volume {name}: mounting {v.options['device']} "
                                              f"({v.options['type']}): {e.strerror}") from None
        return path

    def release(self, name: str) -> None:
        """No running container uses this volume any more: its device, if any, is unmounted."""
        with self._lock, contextlib.suppress(NotFound):
            if self.get(name).options:
                self._unmount(name)

    def _unmount(self, name: str) -> None:
        path = str(self.path(name))
        while os.path.ismount(path):
            try:
                sc.umount(path, 0)
            except OSError:
                sc.umount(path, sc.MNT_DETACH)
