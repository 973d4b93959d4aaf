"""What a container's mounts need on this host: volumes made at create (and undone if the create
fails), the mount list the shim gets, device-backed volumes mounted while in use, docker inspect's
Mounts, and what keeps a container's volumes from moving to another host.

The container manager owns one; nothing here starts or stops a container. The volumes themselves
are agent/volumes/store.py's, the mount specs' parsing agent/volumes/specs.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from agent.model import AgentError, Container, ContainerConfig, InvalidArgument, Mount, NotFound
from agent.runtime.spec import ContainerMount, mount_key
from agent.taskfiles import TaskFiles
from agent.volumes import specs as mount_specs
from agent.volumes.store import VolumeStore

log = logging.getLogger("dockyard.agent")

ACTIVE = ("running", "paused")


def volume_names(c: Container) -> list[str]:
    return list(dict.fromkeys(m.source for m in c.config.mounts if m.type == "volume" and m.source))


class ContainerMounts:
    def __init__(self, volumes: VolumeStore, taskfiles: TaskFiles,
                 containers: Callable[[], Iterable[Container]]) -> None:
        self.volumes = volumes
        self.taskfiles = taskfiles
        self._containers = containers   # the manager's, at the time of asking
        volumes.users = self.users      # (a volume in use cannot be removed)

    def users(self, name: str) -> list[str]:
        """The containers that mount volume `name`, as docker's "volume is in use" names them."""
        return [f"{c.name} ({c.state.status})" for c in list(self._containers())
                if any(m.type == "volume" and m.source == name for m in c.config.mounts)]

    # --- create ---------------------------------------------------------------------------------

    def volumes_from(self, cfg: ContainerConfig, get: Callable[[str], Container]) -> list[Mount]:
        """--volumes-from CONTAINER[:ro|rw]: that container's volumes and binds at the same targets
        (ro/rw overrides their mode), under this run's own mounts; never its tmpfs (docker's rule)."""
        covered = {os.path.normpath(m.target) for m in cfg.mounts}
        out: list[Mount] = []
        for spec in cfg.volumes_from:
            ref, _, mode = spec.partition(":")
            if mode not in ("", "ro", "rw"):
                raise InvalidArgument(f"--volumes-from {spec}: invalid mode {mode!r} (ro or rw)")
            other = get(ref)
            for m in other.config.mounts:
                if m.type == "tmpfs" or os.path.normpath(m.target) in covered:
                    continue
                covered.add(os.path.normpath(m.target))
                out.append(replace(m, readonly=(mode == "ro") if mode else m.readonly, anonymous=False,
                                   create_source=False, origin="", spec="", volume_labels={}, volume_options={}))
        return out

    def prepare(self, cfg: ContainerConfig) -> list[str]:
        """What the mounts need on this host, before the container is made: bind sources (-v makes
        a missing one, --mount refuses it), named volumes (made if missing, as docker run does)
        and anonymous ones. Returns the volumes made here, for `undo`."""
        for m in cfg.mounts:
            if m.type == "bind" and not m.create_source and not os.path.lexists(m.source):
                raise InvalidArgument(f'invalid mount config for type "bind": bind source path does not exist: '
                                      f"{m.source}")
            mount_specs.check_source_propagation(m)  # (a missing -v path: the mount it would be made on)
            if m.type == "volume" and m.external and not self.volumes.exists(m.source):
                raise NotFound(f"external volume {m.source} does not exist on this host (volume create it first)")
        made: list[str] = []
        try:
            for m in cfg.mounts:
                if m.type == "bind" and not os.path.lexists(m.source):
                    os.makedirs(m.source, 0o755, exist_ok=True)
                elif m.type == "volume" and (m.anonymous and not m.source):
                    m.source = self.volumes.create(anonymous=True).name
                    made.append(m.source)
                elif m.type == "volume" and not self.volumes.exists(m.source):
                    self.volumes.create(m.source, m.volume_driver or "local", m.volume_labels, m.volume_options)
                    made.append(m.source)
        except BaseException:
            self.undo(made)
            raise
        return made

    def undo(self, made: list[str]) -> None:
        """The volumes a failed create made: gone, so nothing is left half-made."""
        for name in made:
            with contextlib.suppress(AgentError):
                self.volumes.remove(name, force=True)

    # --- start and exit -------------------------------------------------------------------------

    def for_shim(self, c: Container) -> list[ContainerMount]:
        """The runtime spec's volumes: binds of volume directories and host paths, tmpfs, and the
        task's secrets and configs."""
        out = []
        for m in c.config.mounts:
            if m.type == "tmpfs":
                out.append(ContainerMount("tmpfs", "", m.target, m.readonly, list(m.tmpfs_options)))
                continue
            source = str(self.volumes.path(m.source)) if m.type == "volume" else m.source
            out.append(ContainerMount("bind", source, m.target, m.readonly, [],
                                      copy_up=m.type == "volume" and not m.nocopy, key=mount_key(m.target),
                                      propagation=(m.propagation or "rprivate") if m.type == "bind" else "rprivate"))
        return out + self.taskfiles.mounts(c.id, c.config.task_files)

    async def acquire(self, c: Container) -> None:
        """Volumes of the local driver with a device (-o type=... device=...) are mounted on
        their directory while a running container uses them."""
        for m in c.config.mounts:
            if m.type == "volume" and self.volumes.get(m.source).options:
                await asyncio.to_thread(self.volumes.acquire, m.source)

    def has_device_volume(self, c: Container) -> bool:
        """Whether a volume of c's is the local driver's with a device (mounted while in use)."""
        for m in c.config.mounts:
            if m.type == "volume":
                with contextlib.suppress(AgentError):
                    if self.volumes.get(m.source).options:
                        return True
        return False

    def release(self, c: Container) -> None:
        """c no longer runs: a device volume no other running container uses is unmounted."""
        running = [o for o in list(self._containers()) if o is not c and o.state.status in ACTIVE]
        for m in c.config.mounts:
            if m.type != "volume":
                continue
            if not any(any(x.type == "volume" and x.source == m.source for x in o.config.mounts) for o in running):
                self.volumes.release(m.source)

    def remove(self, names: list[str]) -> None:
        """Volumes that go with their container (rm -v, --rm, a migration's source)."""
        for name in names:
            try:
                self.volumes.remove(name, force=True)
            except AgentError as e:  # another container mounts it too: it stays, as in docker
                log.info("volume %s kept: %s", name, e)

    # --- inspect and migration ------------------------------------------------------------------

    def info(self, c: Container) -> list[dict[str, Any]]:
        """docker inspect's Mounts."""
        out: list[dict[str, Any]] = []
        for m in c.config.mounts:
            if m.type == "tmpfs":
                out.append({"Type": "tmpfs", "Source": "", "Destination": m.target, "Mode": ",".join(m.tmpfs_options),
                            "RW": not m.readonly, "Propagation": ""})
                continue
            d: dict[str, Any] = {"Type": m.type}
            if m.type == "volume":
                d.update(Name=m.source, Source=str(self.volumes.path(m.source)), Driver="local")
            else:
                d["Source"] = m.source
            mode = [x for x in ("ro" if m.readonly else "", m.selinux, "nocopy" if m.nocopy else "") if x]
            d.update(Destination=m.target, Mode=",".join(mode), RW=not m.readonly,
                     Propagation=(m.propagation or "rprivate") if m.type == "bind" else "")
            out.append(d)
        return out

    def migration_problems(self, binds: list[str], volumes: list[str], propagation: Sequence[str] = ()) -> list[str]:
        """What keeps a container with these mounts from moving here (asked before anything stops):
        a bind's source must exist, and be a shared (or slave) mount here too if its propagation
        says so (as at any start: a restore could not give the bind its peer group otherwise)."""
        problems = [f"bind mount source {b} does not exist on this host" for b in binds if not os.path.lexists(b)]
        for b, mode in zip(binds, propagation, strict=False):
            if mode and os.path.lexists(b):
                try:
                    mount_specs.check_source_propagation(Mount(type="bind", source=b, propagation=mode))
                except InvalidArgument as e:
                    problems.append(str(e).replace(f"bind mount {b}:: ", f"bind mount source {b}: "))
        problems += [f"volume {v} already exists on this host" for v in volumes if self.volumes.exists(v)]
        return problems

    def shared(self, c: Container) -> list[str]:
        """This container's volumes that other containers here mount too: they cannot move with it."""
        return [f"volume {n} is also used by {', '.join(u)}" for n in volume_names(c)
                if (u := [x for x in self.users(n) if not x.startswith(f"{c.name} (")])]
