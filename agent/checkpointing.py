"""Checkpoint and restore with CRIU, for one host's containers: dump (and leave running or not),
post-copy dumps whose pages stay in CRIU's page server (agent/checkpoint/lazy.py), cold exports of a
stopped container's writable layer, restores from this host's last checkpoint or from an archive
(agent/checkpoint/archive.py, Podman's layout), and lazy restores that pull their pages.

The container manager (containers.py) owns the containers, their locks and their exits; this part
keeps which of them are being dumped (their exit is CRIU's doing, not a failure), restored lazily, or
still pulling pages (never restarted here meanwhile), and asks the manager for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import names
from agent.containermounts import volume_names
from agent.images.errors import ImageNotFound
from agent.model import AgentError, Conflict, Container, InvalidArgument, NotFound, Port, Unavailable
from agent.runtime.procs import pid_start_time, process_alive, trace
from agent.runtime.spec import mount_key

if TYPE_CHECKING:
    from agent.containers import ContainerManager

log = logging.getLogger("dockyard.agent")


class Checkpoints:
    def __init__(self, manager: ContainerManager) -> None:
        self.m = manager
        self._checkpointing: set[str] = set()
        self._lazy_restores: set[str] = set()  # restoring with lazy pages (post-copy)
        self._pulling: set[str] = set()  # restored, pages still coming: never restarted here
        self.page_tls: Path | None = None  # <root>/tls with a cluster certificate: criu's page server over TLS

    def dumping(self, c: Container) -> bool:
        """CRIU is dumping it: its exit is CRIU's, not a failure, and its address stays."""
        return c.id in self._checkpointing

    def restoring_lazily(self, c: Container) -> bool:
        return c.id in self._lazy_restores

    def pulling(self, c: Container) -> bool:
        """Restored post-copy and its pages still coming from the source."""
        return c.id in self._pulling

    def _dump_plan(self, ref: str) -> tuple[Container, Any, int, list[str]]:
        """What a CRIU dump of the container needs: (container, criu, init's host pid, externals).
        Records the container's stdio and netns keys, which its restore maps back."""
        from agent.checkpoint.criu import find_criu

        c = self.m.get(ref)
        if c.state.status != "running":
            raise Conflict(f"container {c.name} is not running")
        if c.config.tty:
            raise InvalidArgument(f"container {c.name} has a terminal (-t): checkpointing it is not supported")
        if c.config.userns_mode == "remap":
            raise InvalidArgument(f"container {c.name} runs in a user namespace: checkpointing it is not supported")
        if c.config.networks or c.extra_endpoints:
            # (its restore would rebuild eth0 only: the further interfaces are not carried yet)
            raise InvalidArgument(f"container {c.name} is on more than one network "
                                  f"({', '.join(a.name for a in c.config.networks)} beside its first): "
                                  "checkpointing it is not supported yet (network disconnect them first)")
        criu = find_criu()
        if criu is None:
            raise Unavailable("CRIU is not installed on this host (deploy/install-criu.sh)")
        pid = int(self.m.supervisor.init_info(c)["pid"])
        c.stdio_keys = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)]
        external = []
        c.netns_key = ""
        if c.config.network_mode != "host":
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            c.netns_key = "extnetns"
            external.append(f"net[{ino}]:{c.netns_key}")
        # Volumes and bind mounts come from the host: CRIU names them, and the restore maps each
        # name to the source there (shim._restore).

        external += [f"mnt[{m.target}]:{mount_key(m.target)}" for m in c.config.mounts if m.type != "tmpfs"]
        external += [f"mnt[{f.target}]:{mount_key(f.target)}" for f in c.config.task_files]
        return c, criu, pid, external

    async def checkpoint(self, ref: str, leave_running: bool = False, export: Any = None,
                         level: int = 3, dumped: Callable[[], None] | None = None) -> dict[str, Any]:
        """CRIU-dump the container's process tree; with `export`, write a checkpoint archive to it.
        `dumped` is called once the tree is frozen in the images (before the archive is written)."""
        c, criu, pid, external = self._dump_plan(ref)
        images = self.m.dir / c.id / "checkpoint"
        shutil.rmtree(images, ignore_errors=True)
        async with self.m._lock(c):
            if not leave_running:
                self._checkpointing.add(c.id)
            try:
                seconds = await asyncio.to_thread(
                    criu.dump, pid, images, root=str(self.m.files(c).dir / "rootfs"), leave_running=leave_running,
                    tcp_established=True, file_locks=True, external=external,
                    log_file=self.m.dir / c.id / "dump.log")
            except Exception as e:
                self._checkpointing.discard(c.id)
                raise AgentError(f"checkpoint of {c.name} failed: {e}") from e
            c.state.checkpoint = str(images)
            self.m._save(c)
            if not leave_running:
                await asyncio.wait_for(self.m._event(c).wait(), 30)
                self._checkpointing.discard(c.id)
        stats = {"dump_seconds": seconds, "container": c.id}
        if dumped is not None:
            dumped()
        if export is not None:
            await asyncio.to_thread(self._export_checkpoint, c, export, stats, images, level)
        return stats

    async def checkpoint_lazy(self, ref: str, address: str, port: int, export: Any, level: int = 1,
                              dumped: Callable[[], None] | None = None, crl: bytes = b"") -> Any:
        """Post-copy: freeze and dump the container without its memory pages, which CRIU keeps and
        serves on address:port (agent/checkpoint/lazy.py), and write the archive to `export`.

        Returns the running LazyDump; give it to lazy_dump_ended once it ends. The images are not
        a checkpoint this host could restore from (the pages are not in them), so they are kept
        apart from c.state.checkpoint and removed at the end.
        """
        from agent.checkpoint.lazy import LazyDump

        c, criu, pid, external = self._dump_plan(ref)
        images = self.m.dir / c.id / "lazy-checkpoint"
        shutil.rmtree(images, ignore_errors=True)
        async with self.m._lock(c):
            self._checkpointing.add(c.id)
            start = time.monotonic()
            try:
                trace("agent: lazy dump")
                crl_file = None
                if crl and self.page_tls is not None:  # the scheduler's list of removed nodes' certificates
                    crl_file = self.m.dir / c.id / "page-server-crl.pem"
                    crl_file.write_bytes(crl)
                dump = await LazyDump.start(criu, pid, images, root=str(self.m.files(c).dir / "rootfs"),
                                            address=address, port=port, external=external,
                                            log_file=self.m.dir / c.id / "dump.log", tls_dir=self.page_tls,
                                            crl_file=crl_file)
            except Exception as e:
                self._checkpointing.discard(c.id)
                shutil.rmtree(images, ignore_errors=True)
                raise AgentError(f"checkpoint of {c.name} failed: {e}") from e
            trace("agent: lazy dump ready")
            # For the next agent, should this one die before the dump ends (see adopt).
            (self.m.dir / c.id / "lazy-dump.json").write_text(json.dumps(
                {"pid": dump.proc.pid, "start_time": pid_start_time(dump.proc.pid), "address": address,
                 "port": port}))
            self.m._save(c)
        stats = {"dump_seconds": time.monotonic() - start, "container": c.id, "lazy_pages": dump.page_server}
        if dumped is not None:
            dumped()
        try:
            await asyncio.to_thread(self._export_checkpoint, c, export, stats, images, level)
        except BaseException:
            await dump.abort()
            await self.lazy_dump_ended(c.id, ok=False)
            raise
        return dump

    async def lazy_dump_ended(self, ref: str, ok: bool) -> bool:
        """ok: the target took every page and CRIU ended the tree here (wait for that exit); else
        CRIU should have unfrozen the tree. Returns whether it runs here (a failure after CRIU
        ended the tree is seen within a second). The container may be gone already: a scheduler
        that saw the target run it removes the source copy, pages pulled or not."""
        from agent.checkpoint.lazy import unlock_network

        c = self.m.containers.get(ref)
        if c is None:
            self._checkpointing.discard(ref)
            return False
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.m._event(c).wait(), 30 if ok else 1)
            running = c.state.status in ("running", "paused")
            if running and not ok:
                await asyncio.to_thread(unlock_network, int(self.m.supervisor.init_info(c)["pid"]))
            return running
        finally:
            self._checkpointing.discard(c.id)
            shutil.rmtree(self.m.dir / c.id / "lazy-checkpoint", ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.m.dir / c.id / "lazy-dump.json").unlink()

    async def end_stale_lazy_dump(self, c: Container) -> None:
        """After a restart: a lazy dump the previous agent left. If its target never connected, the
        abort makes CRIU unfreeze the container; if the target is pulling pages, the dump ends when
        it has them (and CRIU ends the container here, which then reads as exited)."""
        from agent.checkpoint.lazy import abort_page_server

        path = self.m.dir / c.id / "lazy-dump.json"
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        pid, start = int(info["pid"]), int(info["start_time"])
        if process_alive(pid, start):
            log.warning("%s: ending the lazy dump (criu pid %d) the previous agent left", c.name, pid)
            await abort_page_server(str(info["address"]), int(info["port"]))
            while process_alive(pid, start):
                await asyncio.sleep(0.2)
        if c.state.status in ("running", "paused") and self.m.supervisor.shim_alive(c):
            from agent.checkpoint.lazy import unlock_network

            with contextlib.suppress(KeyError, ValueError):
                await asyncio.to_thread(unlock_network, int(self.m.supervisor.init_info(c)["pid"]))
        shutil.rmtree(self.m.dir / c.id / "lazy-checkpoint", ignore_errors=True)
        path.unlink(missing_ok=True)

    def export_cold(self, ref: str, out: Any, level: int = 3) -> None:
        """A stopped container's writable layer and config, in the checkpoint archive's layout."""
        c = self.m.get(ref)
        if c.state.status in ("running", "paused", "restarting"):
            raise Conflict(f"container {c.name} must be stopped for a cold export")
        self._export_checkpoint(c, out, {"cold": True}, None, level=level)

    def _export_checkpoint(self, c: Container, out: Any, stats: dict[str, Any], images_dir: Path | None,
                           level: int = 3) -> None:
        import tempfile

        from agent.checkpoint import archive

        with tempfile.TemporaryDirectory(dir=self.m.root) as tmp:
            diff = Path(tmp) / "rootfs-diff.tar"
            with open(diff, "wb") as f:
                self.m.images.snapshotter.diff(c.snapshot, f)
            spec = json.loads(self.m.files(c).spec.read_text()) if self.m.files(c).spec.exists() else {}

            archive.pack(out, config=asdict(c), spec=spec,
                         images_dir=images_dir, rootfs_diff=diff,
                         network=c.endpoint, stats=stats, level=level,
                         volumes={n: self.m.volumes.carried(n) for n in volume_names(c)})

    async def restore(self, ref: str) -> Container:
        """Bring back a container from its last checkpoint on this host."""
        c = self.m.get(ref)
        async with self.m._lock(c):
            if c.state.status in ("running", "paused"):
                raise Conflict(f"container {c.name} is running")
            if not c.state.checkpoint or not Path(c.state.checkpoint).is_dir():
                raise Conflict(f"container {c.name} has no checkpoint to restore")
            c.state.stopped_by_user = False
            await self.m._start_locked(c, hold=False, restore=True)
        return c

    async def restore_archive(self, src: Any, name: str = "", cold: bool = False, page_server: str = "") -> Container:
        """A new container from a checkpoint archive (`dockyard restore -i`), here or on another host.

        cold: the archive holds a stopped container (no CRIU images): create it and start it fresh.
        page_server: post-copy; the archive's images lack the memory pages, which come from the
        source's CRIU page server at host:port once the container runs (agent/checkpoint/lazy.py).
        """
        from agent.checkpoint import archive
        from agent.model import from_dict

        cid = names.new_id()
        cdir = self.m.dir / cid
        tmp = cdir / "unpack"
        adopted: list[str] = []   # volumes that came with it: removed again if it does not run here
        trace("agent: unpack")
        try:
            meta = await asyncio.to_thread(archive.unpack, src, tmp, cold)
        except archive.ArchiveError as e:
            shutil.rmtree(cdir, ignore_errors=True)
            raise InvalidArgument(str(e)) from e
        try:
            old = from_dict(Container, meta["config"])
            cfg = old.config
            cfg.name = name or cfg.name
            if any(o.name == cfg.name for o in self.m.containers.values()):
                raise Conflict(f'the container name "/{cfg.name}" is already in use: restore with --name')
            try:
                image = self.m.images.get(old.image_id)
            except ImageNotFound as e:
                raise NotFound(f"the checkpoint needs image {old.image_ref} ({old.image_id[:19]}), "
                               f"which is not on this host: pull or load it first") from e
            trace("agent: unpacked")
            # A volume of that name here is the one to use (a checkpoint restored on its own host);
            # a migration asked first that none is here (ContainerMounts.migration_problems).
            for vname, rec in meta.get("volumes", {}).items():
                if self.m.volumes.exists(vname):
                    continue
                await asyncio.to_thread(self.m.volumes.adopt, vname, dict(rec.get("labels") or {}),
                                        dict(rec.get("options") or {}), bool(rec.get("anonymous")),
                                        tmp / "volumes" / vname if rec.get("carried") else None)
                adopted.append(vname)
            # the diff becomes the new container's own writable layer, as it was on the source
            await asyncio.to_thread(self.m.images.snapshotter.prepare, cid, image.chain_id)
            with open(tmp / "rootfs-diff.tar", "rb") as f:
                await asyncio.to_thread(self.m.images.snapshotter.fill, cid, f, "rootfs-diff.tar",
                                        self.m.images.limits.budget().bound())
            if not cold:
                os.rename(tmp / "checkpoint", cdir / "checkpoint")
            c = Container(id=cid, name=cfg.name, created=time.time(), config=cfg, image_id=image.id,
                          image_ref=old.image_ref, snapshot=cid, args=old.args,
                          ports=[Port(**asdict(p)) for p in cfg.ports], stdio_keys=old.stdio_keys,
                          netns_key=old.netns_key, restored_from_ip=str((meta.get("network") or {}).get("ip", "")))
            if not cold:
                c.state.checkpoint = str(cdir / "checkpoint")
            if cfg.task_files:  # a task's secrets and configs: from the scheduler, onto this node's tmpfs
                files = await self.m.fetch_task_files(cfg)
                await asyncio.to_thread(self.m.taskfiles.write, cid, cfg.task_files, files)
            shutil.rmtree(tmp, ignore_errors=True)
            self.m._save(c)
            trace("agent: layer applied")
        except BaseException:
            with contextlib.suppress(Exception):
                self.m.images.snapshotter.remove(cid)
            with contextlib.suppress(OSError):
                self.m.taskfiles.remove(cid)
            shutil.rmtree(cdir, ignore_errors=True)
            await asyncio.to_thread(self.m.mounts.remove, adopted)
            raise
        self.m.containers[cid] = c
        try:
            if cold:
                await self.m.start(cid)
            elif page_server:
                await self._restore_lazy(c, page_server)
            else:
                await self.restore(cid)
        except BaseException:
            await self.m.remove(cid, force=True)
            await asyncio.to_thread(self.m.mounts.remove, adopted)
            raise
        return c

    async def _restore_lazy(self, c: Container, page_server: str) -> None:
        """Start the lazy-pages daemon, then restore with --lazy-pages: the container runs when this
        returns, while its memory still comes in; a watcher follows the daemon to its end."""
        from agent.checkpoint.criu import find_criu
        from agent.checkpoint.lazy import PageDaemon

        criu = find_criu()
        if criu is None:
            raise Unavailable("CRIU is not installed on this host (deploy/install-criu.sh)")
        trace("agent: lazy-pages daemon")
        try:
            daemon = await PageDaemon.start(criu, Path(c.state.checkpoint), page_server,
                                            restore_pidfile=self.m.files(c).dir / "restore.pid",
                                            log_file=self.m.dir / c.id / "lazy-pages.log", tls_dir=self.page_tls)
        except Exception as e:
            raise AgentError(f"restore of {c.name}: no lazy-pages daemon: {e}") from e
        trace("agent: lazy-pages daemon ready")
        self._lazy_restores.add(c.id)
        self._pulling.add(c.id)
        try:
            await self.restore(c.id)
        except BaseException:
            daemon.stop()
            self._pulling.discard(c.id)
            raise
        finally:
            self._lazy_restores.discard(c.id)
        self.m._spawn(self._follow_page_daemon(c, daemon))

    async def _follow_page_daemon(self, c: Container, daemon: Any) -> None:
        from agent.checkpoint.criu import CriuError

        t0 = time.monotonic()
        try:
            await daemon.wait()
            log.info("%s: every page pulled from the source in %.2f s", c.name, time.monotonic() - t0)
        except CriuError as e:
            # Its watchdog killed the container: it would have run on with zeros for memory.
            c.state.stopped_by_user = True
            c.state.error = f"its memory could not all be pulled from the source, so it was killed: {e}"
            self.m._save(c)
            log.error("%s: %s", c.name, c.state.error)
        finally:
            self._pulling.discard(c.id)
