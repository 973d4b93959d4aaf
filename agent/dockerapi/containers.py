"""Container and exec endpoints, on the container manager."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.execsession import ExecSession
from agent.images.errors import ImageNotFound
from agent.model import AgentError, Conflict, Container, NotFound, RestartPolicy
from agent.runtime import frames
from agent.runtime.spec import ProcessSpec

from . import convert
from .http import (
    Body,
    Hijack,
    HTTPError,
    Json,
    Request,
    Response,
    Stream,
    WebSocket,
    file_chunks,
    receive,
    spooled,
)
from .streams import DEFAULT_DETACH, STDERR, STDOUT, DetachScanner, mux, parse_detach_keys, relay_attach
from .system import check_filters, parse_filters, parse_time

if TYPE_CHECKING:
    from .api import DockerAPI

RUNNING = ("running", "paused", "restarting")


class PendingAttach:
    """An attach that came before the start (docker run): the start hands the monitor our socket
    pair's other end, so the client sees the output from its first byte."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@dataclass
class ExecRecord:
    id: str
    container: str
    proc: ProcessSpec
    attach_stdout: bool
    attach_stderr: bool
    detach_keys: bytes
    running: bool = False
    exit_code: int | None = None
    session: ExecSession | None = None
    created: float = field(default_factory=time.time)


def _stream_type(req: Request, tty: bool) -> str:
    if tty:
        return "application/vnd.docker.raw-stream"
    major, _, minor = req.version.partition(".")
    return "application/vnd.docker.multiplexed-stream" if (int(major), int(minor)) >= (1, 42) \
        else "application/vnd.docker.raw-stream"


def _ts(t: float) -> str:
    whole = int(t)
    frac = round((t - whole) * 1e9)
    return datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def register(r: Any, api: DockerAPI) -> None:
    m = api.m

    def get(req: Request) -> Container:
        c: Container = m.get(req.params["id"])
        return c

    # --- create, list, inspect ------------------------------------------------------------------

    async def create(req: Request) -> Response:
        name = req.arg("name")
        cfg, console = convert.config_from_docker(await req.json(), name)
        try:
            await asyncio.to_thread(api.images.get, cfg.image)
        except ImageNotFound:
            raise HTTPError(404, f"No such image: {cfg.image}") from None
        c = await asyncio.to_thread(m.create, cfg)
        if console:
            api.console[c.id] = console
        return Json(201, {"Id": c.id, "Warnings": []})

    async def listing(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"id", "name", "label", "status", "ancestor", "exited", "before", "since", "health"})
        limit = req.int_arg("limit", -1) or -1
        cs: list[Container] = m.listing(req.flag("all") or limit > 0 or "status" in filters or "exited" in filters)
        cs = [c for c in cs if _matches(api, c, filters)]
        if limit > 0:
            cs = cs[:limit]
        size = req.flag("size")
        rows = []
        for c in cs:
            sz = None
            if size:
                with contextlib.suppress(Exception):
                    used = await asyncio.to_thread(api.images.snapshotter.usage, c.snapshot)
                    sz = (used, used + api.images.get(c.image_id).size)
            rows.append(convert.summary(c, sz, _health_of(api, c), m.mounts.info(c)))
        return Json(200, rows)

    async def inspect(req: Request) -> Response:
        c = get(req)
        ic = None
        with contextlib.suppress(Exception):
            ic = api.images.config_of(c.image_id)
        health = api.health.health.get(c.id) if api.health is not None else None
        doc = convert.inspect(c, str(m.files(c).log), ic, health, m.mounts.info(c), req.version)
        doc["ExecIDs"] = [e.id for e in api.execs.values() if e.container == c.id] or None
        if req.flag("size"):
            with contextlib.suppress(Exception):
                doc["SizeRw"] = await asyncio.to_thread(api.images.snapshotter.usage, c.snapshot)
                doc["SizeRootFs"] = doc["SizeRw"] + api.images.get(c.image_id).size
        return Json(200, doc)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(req: Request) -> Response:
        c = get(req)
        if c.state.status in ("running", "paused"):
            return Body(304, b"")
        if req.arg("detachKeys"):
            parse_detach_keys(req.arg("detachKeys"))
        pend = api.pending.pop(c.id, [])
        if not pend:
            await m.start(c.id)
            return Body(204, b"")
        first = pend[0]
        try:
            await m.start(c.id, hold=c.config.tty, client=first.theirs.fileno())
        except BaseException as e:
            for p in pend:
                if not p.started.done():
                    p.started.set_exception(e if isinstance(e, Exception) else ConnectionResetError())
            raise
        finally:
            first.theirs.close()
        first.started.set_result(True)
        for p in pend[1:]:
            p.started.set_result(False)
        return Body(204, b"")

    async def stop(req: Request) -> Response:
        c = get(req)
        if req.arg("signal"):
            raise HTTPError(400, "stop with a signal other than the container's StopSignal is not supported "
                                 "by dockyard: use kill")
        if c.state.status not in RUNNING:
            return Body(304, b"")
        await m.stop(c.id, req.int_arg("t"))
        return Body(204, b"")

    async def restart(req: Request) -> Response:
        if req.arg("signal"):
            raise HTTPError(400, "restart with a signal is not supported by dockyard")
        await m.restart(get(req).id, req.int_arg("t"))
        return Body(204, b"")

    async def kill(req: Request) -> Response:
        c = get(req)
        sig = req.arg("signal") or "KILL"
        died = api.events.future_of(c.id, {"die", "destroy"})
        try:
            await m.kill(c.id, sig)
        except Conflict:
            died.cancel()
            raise HTTPError(409, f"Cannot kill container: {req.params['id']}: Container {c.id} is not running") \
                from None
        if sig.upper().removeprefix("SIG") in ("KILL", "9"):   # as dockerd: a SIGKILL returns once it is dead
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(died), 10)
        died.cancel()
        return Body(204, b"")

    async def pause(req: Request) -> Response:
        await m.pause(get(req).id)
        return Body(204, b"")

    async def unpause(req: Request) -> Response:
        await m.unpause(get(req).id)
        return Body(204, b"")

    async def wait(req: Request) -> Response:
        c = get(req)
        cond = req.arg("condition") or "not-running"
        if cond not in ("not-running", "next-exit", "removed"):
            raise HTTPError(400, f"invalid condition: {cond!r} (not-running, next-exit or removed)")
        if cond == "removed":
            fut = api.events.future_of(c.id, {"destroy"})
        elif cond == "next-exit" or c.state.status in RUNNING:
            fut = api.events.future_of(c.id, {"die", "destroy"})
        else:
            fut = None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                if fut is not None:
                    await fut
            finally:
                if fut is not None and not fut.done():
                    fut.cancel()
            err = {"Message": c.state.error} if c.state.error else None
            yield json.dumps({"StatusCode": c.state.exit_code, "Error": err}).encode() + b"\n"

        return Stream(200, chunks())

    async def remove(req: Request) -> Response:
        c = get(req)
        if req.flag("link"):
            raise HTTPError(400, f"Conflict, cannot remove the default link name of the container {c.name}")
        await m.remove(c.id, req.flag("force"))
        api.console.pop(c.id, None)
        for eid in [e.id for e in api.execs.values() if e.container == c.id]:
            api.execs.pop(eid, None)
        return Body(204, b"")

    async def remove_link(req: Request) -> Response:
        """DELETE /containers/PARENT/ALIAS?link=1: a legacy link of PARENT."""
        if not req.flag("link"):
            raise HTTPError(404, f"No such container: {req.params['parent']}/{req.params['alias']}")
        await asyncio.to_thread(m.remove_link, m.get(req.params["parent"]), req.params["alias"])
        return Body(204, b"")

    async def rename(req: Request) -> Response:
        new = req.arg("name")
        if not new:
            raise HTTPError(400, "rename needs a new name (?name=)")
        m.rename(get(req).id, new)
        return Body(204, b"")

    async def prune(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"until", "label"})
        until = parse_time(filters["until"][0], "until") if filters.get("until") else None
        deleted = []
        reclaimed = 0
        for c in list(m.containers.values()):
            if c.state.status in RUNNING or (until is not None and c.created >= until):
                continue
            if not _labels_match(c, filters.get("label", [])):
                continue
            used = 0
            with contextlib.suppress(Exception):
                used = await asyncio.to_thread(api.images.snapshotter.usage, c.snapshot)
            with contextlib.suppress(AgentError):
                await m.remove(c.id)
                deleted.append(c.id)
                reclaimed += used
        return Json(200, {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed})

    # --- output and input -------------------------------------------------------------------------

    async def logs(req: Request) -> Response:
        c = get(req)
        out, err = req.flag("stdout"), req.flag("stderr")
        if not (out or err):
            raise HTTPError(400, "Bad parameters: you must choose at least one stream")
        tail_s = req.arg("tail") or "all"
        try:
            tail = -1 if tail_s == "all" else int(tail_s)
        except ValueError:
            raise HTTPError(400, f"invalid tail {tail_s!r}: a number or all") from None
        since = parse_time(req.arg("since"), "since") or 0.0
        until = parse_time(req.arg("until"), "until") or 0.0
        stamps = req.flag("timestamps")
        tty = c.config.tty
        want = {s for s, on in (("stdout", out), ("stderr", err)) if on}

        async def chunks() -> AsyncIterator[bytes]:
            async for stream, data, t in m.logs(c.id, req.flag("follow"), tail, since, until, req.flag("details")):
                if stream not in want:
                    continue
                if stamps:
                    data = _ts(t).encode() + b" " + data
                yield data if tty else mux(STDOUT if stream == "stdout" else STDERR, data)

        return Stream(200, chunks(), _stream_type(req, tty))

    def attach_session(req: Request, raw: bool) -> Any:
        """The session of one attach: replayed logs, then the live relay. raw: output unframed
        (a terminal's, or a websocket's, which docker never multiplexes)."""
        c = get(req)
        detach = parse_detach_keys(req.arg("detachKeys") or DEFAULT_DETACH)
        want_in, want_out, want_err = req.flag("stdin"), req.flag("stdout"), req.flag("stderr")
        replay, live = req.flag("logs"), req.flag("stream")
        if not (replay or live):
            raise HTTPError(400, "attach needs stream=1 or logs=1")
        tty = c.config.tty
        plain = tty or raw
        pend: PendingAttach | None = None
        if live and c.state.status not in ("running", "paused"):
            pend = PendingAttach()
            api.pending.setdefault(c.id, []).append(pend)

        async def session(reader: asyncio.StreamReader, writer: Any) -> None:
            try:
                if replay:
                    async for stream, data, _t in m.logs(c.id, False):
                        if (stream == "stdout" and want_out) or (stream == "stderr" and want_err):
                            writer.write(data if plain else mux(STDOUT if stream == "stdout" else STDERR, data))
                    await writer.drain()
                if not live:
                    return
                if pend is not None:
                    gone = api.events.future_of(c.id, {"destroy"})
                    waits: set[asyncio.Future[Any]] = {pend.started, gone}
                    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    gone.cancel()
                    if pend.started not in done or pend.started.exception() is not None:
                        return
                    if pend.started.result():
                        mon_r, mon_w = await asyncio.open_unix_connection(sock=pend.ours)
                        if tty:
                            rows, cols = api.console.get(c.id, (0, 0))
                            if rows:
                                mon_w.write(frames.encode_json(frames.RESIZE, {"rows": rows, "cols": cols}))
                            mon_w.write(frames.encode(frames.RELEASE))
                            await mon_w.drain()
                    else:
                        mon_r, mon_w = await m.attach(c.id)
                else:
                    mon_r, mon_w = await m.attach(c.id)
                api.sessions.setdefault(c.id, []).append(mon_w)
                try:
                    await relay_attach(m, c, (mon_r, mon_w), reader, writer, tty=plain, stdin=want_in,
                                       stdin_once=c.config.stdin_once, stdout=want_out, stderr=want_err,
                                       detach=detach)
                finally:
                    with contextlib.suppress(ValueError, KeyError):
                        api.sessions[c.id].remove(mon_w)
            finally:
                if pend is not None:
                    with contextlib.suppress(ValueError, KeyError):
                        api.pending[c.id].remove(pend)
                    pend.close()

        return session, tty

    async def attach(req: Request) -> Response:
        session, tty = attach_session(req, raw=False)
        return Hijack(session, _stream_type(req, tty))

    async def attach_ws(req: Request) -> Response:
        session, _tty = attach_session(req, raw=True)
        major, _, minor = req.version.partition(".")
        return WebSocket(session, binary=(int(major), int(minor)) >= (1, 42))

    async def resize(req: Request) -> Response:
        c = get(req)
        rows, cols = req.int_arg("h", 0) or 0, req.int_arg("w", 0) or 0
        if rows <= 0 or cols <= 0:
            raise HTTPError(400, "resize needs h and w above 0")
        if c.state.status not in ("running", "paused"):
            api.console[c.id] = (rows, cols)  # the size it starts at
            return Body(200, b"")
        if not c.config.tty:
            return Body(200, b"")
        frame = frames.encode_json(frames.RESIZE, {"rows": rows, "cols": cols})
        live = api.sessions.get(c.id) or []
        if live:
            live[-1].write(frame)
        else:
            _r, w = await m.attach(c.id)
            w.write(frame)
            await w.drain()
            w.close()
        return Body(200, b"")

    # --- looking inside ---------------------------------------------------------------------------

    async def top(req: Request) -> Response:
        ps_args = req.arg("ps_args")
        if ps_args not in ("", "-ef", "ef"):
            raise HTTPError(400, f"ps_args {ps_args!r} are not supported by dockyard (only -ef's columns)")
        titles, rows = await asyncio.to_thread(m.top, get(req).id)
        return Json(200, {"Titles": titles, "Processes": rows})

    async def stats(req: Request) -> Response:
        c = get(req)
        stream = req.flag("stream", True) and not req.flag("one-shot")
        from .stats import sample

        async def chunks() -> AsyncIterator[bytes]:
            prev = await sample(m, c, None)
            if not stream:
                if not req.flag("one-shot"):
                    await asyncio.sleep(1.0)  # as docker: precpu_stats is the reading a second before
                    prev = await sample(m, c, prev)
                yield json.dumps(prev).encode() + b"\n"
                return
            while True:
                yield json.dumps(prev).encode() + b"\n"
                if c.state.status not in ("running", "paused") or c.id not in m.containers:
                    return
                await asyncio.sleep(1.0)
                prev = await sample(m, c, prev)

        return Stream(200, chunks())

    async def export(req: Request) -> Response:
        c = get(req)
        tmp = await spooled(api.images.tmp, lambda f: api.images.export_container(c.snapshot, f))
        return Stream(200, file_chunks(tmp), "application/x-tar")

    def _filesystem_of(c: Container, path: str) -> tuple[list[Any], str]:
        """Where a path of the container lives: a volume's or bind's directory (as one layer) when
        it is below that mount's target, else the snapshot's layers."""
        from pathlib import Path

        from .archive import in_mount

        mounts = [(x.target, str(m.volumes.path(x.source)) if x.type == "volume" else x.source)
                  for x in c.config.mounts if x.type in ("volume", "bind") and x.source]
        found = in_mount(mounts, path)
        if found is not None:
            return [Path(found[0])], found[1]
        return list(api.images.snapshotter.layer_dirs(c.snapshot)), path

    async def archive(req: Request) -> Response:
        from .archive import path_stat, tar_path

        c = get(req)
        path = req.arg("path")
        if not path:
            raise HTTPError(400, "archive needs a path (?path=)")
        layers, path = _filesystem_of(c, path)
        st = await asyncio.to_thread(path_stat, layers, path)
        header = ("X-Docker-Container-Path-Stat", base64.b64encode(json.dumps(st).encode()).decode())
        if req.method == "HEAD":
            return Body(200, b"", "application/x-tar", [header])
        tmp = await spooled(api.images.tmp, lambda f: tar_path(layers, path, f))
        return Stream(200, file_chunks(tmp), "application/x-tar", [header])

    async def changes(req: Request) -> Response:
        from .archive import changes as diff

        c = get(req)
        rows = await asyncio.to_thread(diff, api.images.snapshotter.layer_dirs(c.snapshot))
        return Json(200, rows or None)

    async def update(req: Request) -> Response:
        c = get(req)
        body = await req.json() or {}
        if not isinstance(body, dict):
            raise HTTPError(400, "the update body must be a JSON object")
        res_keys = {"Memory": "memory", "MemorySwap": "memory_swap", "NanoCpus": "nano_cpus",
                    "CpuShares": "cpu_shares", "PidsLimit": "pids_limit", "BlkioWeight": "blkio_weight"}
        for k, v in body.items():
            if k not in res_keys and k != "RestartPolicy" and not convert.empty(v):
                raise HTTPError(400, f"update: {k} is not supported by dockyard (got {v!r})")
        limits: dict[str, int] = {}
        for k, attr in res_keys.items():
            if body.get(k) is not None:
                v = convert._int(body[k], k)
                limits[attr] = 0 if attr == "pids_limit" and v < 0 else v
        policy = None
        if body.get("RestartPolicy"):
            rp = body["RestartPolicy"]
            policy = RestartPolicy(convert._str(rp.get("Name"), "RestartPolicy.Name") or "no",
                                   convert._int(rp.get("MaximumRetryCount"), "RestartPolicy.MaximumRetryCount"))
        await m.update(c.id, limits, policy)
        return Json(200, {"Warnings": []})

    async def archive_put(req: Request) -> Response:
        from .archive import put_archive

        c = get(req)
        path = req.arg("path")
        if not path:
            raise HTTPError(400, "archive needs a path (?path=)")
        if req.flag("copyUIDGID"):
            raise HTTPError(400, "copyUIDGID is not supported by dockyard: the tar's owners are kept")
        layers, path = _filesystem_of(c, path)
        rootfs = m.files(c).dir / "rootfs"
        running = c.state.status in ("running", "paused") and os.path.ismount(rootfs) \
            and layers[0] == api.images.snapshotter.layer_dirs(c.snapshot)[0]
        with await receive(req, api.images.tmp) as tmp:
            await asyncio.to_thread(put_archive, layers, rootfs if running else None, path, tmp,
                                    req.flag("noOverwriteDirNonDir"))
        return Body(200, b"")

    # --- exec -------------------------------------------------------------------------------------

    async def exec_create(req: Request) -> Response:
        c = get(req)
        body = await req.json() or {}
        if not isinstance(body, dict):
            raise HTTPError(400, "the exec body must be a JSON object")
        for k, v in body.items():
            if k not in ("AttachStdin", "AttachStdout", "AttachStderr", "DetachKeys", "Tty", "Env", "Cmd",
                         "WorkingDir", "User", "Privileged", "ConsoleSize", "Container", "detachKeys") \
                    and not convert.empty(v):
                raise HTTPError(400, f"exec: {k} is not supported by dockyard (got {v!r})")
        if body.get("Privileged"):
            raise HTTPError(400, "exec: Privileged is not supported by dockyard")
        if body.get("Container") and m.get(str(body["Container"])).id != c.id:   # docker-py repeats the path's id
            raise HTTPError(400, f"exec: Container {body['Container']!r} is not the container of the path")
        cmd = convert._strs(body.get("Cmd"), "Cmd")
        if not cmd:
            raise HTTPError(400, "No exec command specified")
        if c.state.status == "paused":
            raise HTTPError(409, f"Container {c.id} is paused, unpause the container before exec")
        if c.state.status != "running":
            raise HTTPError(409, f"Container {c.id} is not running")
        proc = ProcessSpec(args=cmd, env=convert._strs(body.get("Env"), "Env"),
                           cwd=convert._str(body.get("WorkingDir"), "WorkingDir"),
                           user=convert._str(body.get("User"), "User"), tty=bool(body.get("Tty")),
                           stdin=bool(body.get("AttachStdin")))
        e = ExecRecord(secrets.token_hex(32), c.id, proc, bool(body.get("AttachStdout")),
                       bool(body.get("AttachStderr")),
                       parse_detach_keys(body.get("DetachKeys") or body.get("detachKeys") or DEFAULT_DETACH))
        api.execs[e.id] = e
        return Json(201, {"Id": e.id})

    def get_exec(req: Request) -> ExecRecord:
        e: ExecRecord | None = api.execs.get(req.params["id"])
        if e is None:
            raise HTTPError(404, f"No such exec instance: {req.params['id']}")
        return e

    async def exec_start(req: Request) -> Response:
        e = get_exec(req)
        body = await req.json() or {}
        if e.running or e.exit_code is not None:
            raise HTTPError(409, f"Error: Exec command {e.id} has already run")
        # (the body's Tty is the client's own framing choice: the process has the terminal exec create asked for)
        size = body.get("ConsoleSize")
        sz = (size[0], size[1]) if isinstance(size, list) and len(size) == 2 and size[0] else None
        s = ExecSession(m, e.container, e.proc, sz)
        s.start()   # the manager's errors (not running, paused) answer before the switch
        e.session, e.running = s, True

        async def finish() -> None:
            # dockerd's 126: the command could not be run at all (not found, not executable)
            e.exit_code = 126 if s.exit_code is None or s.error else s.exit_code
            e.running = False
            s.close()

        if body.get("Detach"):
            async def detached() -> None:
                try:
                    async for _ in s.output():
                        pass
                finally:
                    await finish()

            api.spawn(detached())
            return Body(200, b"")
        # dockerd frames the stream by the start body's Tty (the client's choice), whatever terminal
        # the process got from exec create
        tty = bool(body.get("Tty", e.proc.tty))

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def pump_in() -> None:
                scan = DetachScanner(e.detach_keys if e.proc.stdin else b"")
                while True:
                    data = await reader.read(65536)
                    if not data:
                        s.close_stdin()
                        return
                    if not e.proc.stdin:
                        continue
                    data, hit = scan.feed(data)
                    if data:
                        await s.write(data)
                    if hit:
                        writer.close()
                        return

            inbound = asyncio.ensure_future(pump_in())
            try:
                async for stream, data in s.output():
                    if (stream == "stdout" and not e.attach_stdout) or (stream == "stderr" and not e.attach_stderr):
                        continue
                    writer.write(data if tty else mux(STDOUT if stream == "stdout" else STDERR, data))
                    await writer.drain()
            finally:
                inbound.cancel()
                await finish()

        return Hijack(session, _stream_type(req, tty))

    async def exec_resize(req: Request) -> Response:
        e = get_exec(req)
        rows, cols = req.int_arg("h", 0) or 0, req.int_arg("w", 0) or 0
        if rows <= 0 or cols <= 0:
            raise HTTPError(400, "resize needs h and w above 0")
        if e.session is None:
            raise HTTPError(409, f"exec {e.id} is not running")
        e.session.resize(rows, cols)
        return Body(200, b"")

    async def exec_inspect(req: Request) -> Response:
        e = get_exec(req)
        return Json(200, {
            "ID": e.id, "Running": e.running, "ExitCode": e.exit_code, "ProcessConfig": {
                "tty": e.proc.tty, "entrypoint": e.proc.args[0], "arguments": e.proc.args[1:],
                "privileged": False, "user": e.proc.user},
            "OpenStdin": e.proc.stdin, "OpenStderr": e.attach_stderr, "OpenStdout": e.attach_stdout,
            "CanRemove": False, "ContainerID": e.container, "DetachKeys": "",
            "Pid": e.session.pid if e.session is not None and e.running else 0,
        })

    r.add("POST", "/containers/create", create)
    r.add("GET", "/containers/json", listing)
    r.add("POST", "/containers/prune", prune)
    r.add("GET", "/containers/{id}/json", inspect)
    r.add("POST", "/containers/{id}/start", start)
    r.add("POST", "/containers/{id}/stop", stop)
    r.add("POST", "/containers/{id}/restart", restart)
    r.add("POST", "/containers/{id}/kill", kill)
    r.add("POST", "/containers/{id}/pause", pause)
    r.add("POST", "/containers/{id}/unpause", unpause)
    r.add("POST", "/containers/{id}/wait", wait)
    r.add("DELETE", "/containers/{id}", remove)
    r.add("DELETE", "/containers/{parent}/{alias}", remove_link)
    r.add("POST", "/containers/{id}/rename", rename)
    r.add("GET", "/containers/{id}/logs", logs)
    r.add("POST", "/containers/{id}/attach", attach)
    r.add("GET|POST", "/containers/{id}/attach/ws", attach_ws)
    r.add("POST", "/containers/{id}/resize", resize)
    r.add("GET", "/containers/{id}/top", top)
    r.add("GET", "/containers/{id}/stats", stats)
    r.add("GET", "/containers/{id}/export", export)
    r.add("GET", "/containers/{id}/archive", archive)
    r.add("PUT", "/containers/{id}/archive", archive_put)
    r.add("GET", "/containers/{id}/changes", changes)
    r.add("POST", "/containers/{id}/update", update)
    r.add("POST", "/containers/{id}/exec", exec_create)
    r.add("POST", "/exec/{id}/start", exec_start)
    r.add("POST", "/exec/{id}/resize", exec_resize)
    r.add("GET", "/exec/{id}/json", exec_inspect)


def _health_of(api: DockerAPI, c: Container) -> str:
    h = api.health.health.get(c.id) if api.health is not None else None
    return str(h.status) if h is not None else ""


def _labels_match(c: Container, wanted: list[str]) -> bool:
    for lab in wanted:
        k, eq, v = lab.partition("=")
        if k not in c.config.labels or (eq and c.config.labels[k] != v):
            return False
    return True


def _matches(api: DockerAPI, c: Container, f: dict[str, list[str]]) -> bool:
    if "id" in f and not any(c.id.startswith(x) for x in f["id"]):
        return False
    if "name" in f and not any(x.lstrip("/") in c.name for x in f["name"]):
        return False
    if "status" in f and c.state.status not in f["status"]:
        return False
    if "exited" in f and not (c.state.status == "exited" and str(c.state.exit_code) in f["exited"]):
        return False
    if not _labels_match(c, f.get("label", [])):
        return False
    if "health" in f and (_health_of(api, c) or "none") not in f["health"]:
        return False
    if "ancestor" in f:
        ok = False
        for a in f["ancestor"]:
            with contextlib.suppress(Exception):
                if api.images.get(a).id == c.image_id:
                    ok = True
        if not ok:
            return False
    for key, newer in (("before", False), ("since", True)):
        for ref in f.get(key, []):
            try:
                other = api.m.get(ref)
            except NotFound:
                raise HTTPError(404, f"No such container: {ref}") from None
            if (c.created <= other.created) if newer else (c.created >= other.created):
                return False
    return True

