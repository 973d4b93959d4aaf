"""Image endpoints, on the image store, its registry client and its builder."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from agent.images import registry
from agent.images.errors import ImageError, ImageNotFound
from agent.images.pipes import consume, produce

from . import convert
from .http import Body, HTTPError, Json, Request, Response, Stream
from .system import check_filters, parse_filters

if TYPE_CHECKING:
    from agent.images.config import Image

    from .api import DockerAPI



def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\r\n"


def _error(e: BaseException) -> bytes:
    msg = str(e)
    code = getattr(e, "code", 0)   # a RUN's exit status, as dockerd gives it
    return _line({"errorDetail": {"message": msg, **({"code": code} if isinstance(code, int) and code else {})},
                  "error": msg})


def decode_auth(header: str) -> registry.Auth:
    """X-Registry-Auth: base64url JSON {username, password, serveraddress} or {identitytoken};
    padding may be missing, and "e30=" is "{}"."""
    if not header:
        return registry.Auth()
    try:
        data = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)) or b"{}")
    except (ValueError, binascii.Error):
        raise HTTPError(400, "invalid X-Registry-Auth header: not base64url JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "invalid X-Registry-Auth header: not a JSON object")
    return registry.Auth(str(data.get("username") or ""), str(data.get("password") or ""),
                         str(data.get("identitytoken") or ""), str(data.get("registrytoken") or ""))


def _progress_json(p: registry.Progress) -> dict[str, Any]:
    out: dict[str, Any] = {"status": p.status}
    if p.id:
        out["id"] = p.id
    if p.total or p.current:
        out["progressDetail"] = {"current": p.current, "total": p.total}
    return out


async def threaded_progress(fn: Callable[[Callable[[registry.Progress], None]], Any]) -> AsyncIterator[bytes]:
    """Run fn(emit) in a thread; each Progress it emits is one JSON line; an error ends the stream
    as Docker ends it (an errorDetail line, the status already 200)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[registry.Progress | None] = asyncio.Queue()

    def emit(p: registry.Progress) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, p)

    def run() -> Any:
        try:
            return fn(emit)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    task = asyncio.ensure_future(asyncio.to_thread(run))
    while True:
        item = await queue.get()
        if item is None:
            break
        yield _line(_progress_json(item))
    try:
        await task
    except Exception as e:
        yield _error(e)


async def disk_usage(api: DockerAPI, version: str = "1.45") -> dict[str, Any]:
    du = await asyncio.to_thread(api.images.disk_usage)
    imgs = {i.id: i for i in await asyncio.to_thread(api.images.list, True)}
    cs = list(api.m.containers.values())
    usage = {it["key"]: it["size"] for it in du["containers"]["items"]}
    images = []
    for it in du["images"]["items"]:
        i = imgs.get(it["id"])
        if i is None:
            continue
        row = convert.image_summary(i, sum(1 for c in cs if c.image_id == i.id), version)
        row["SharedSize"] = it["shared_size"]
        images.append(row)
    containers = []
    for c in cs:
        row = convert.summary(c)
        row["SizeRw"] = usage.get(c.snapshot, 0)
        row["SizeRootFs"] = row["SizeRw"] + (imgs[c.image_id].size if c.image_id in imgs else 0)
        containers.append(row)
    return {"LayersSize": du["images"]["size"], "Images": images, "Containers": containers, "Volumes": [],
            "BuildCache": []}


def register(r: Any, api: DockerAPI) -> None:
    store = api.images

    def in_use(image_id: str) -> list[str]:
        return list(api.m.users_of_image(image_id))

    def count(image_id: str) -> int:
        return sum(1 for c in api.m.containers.values() if c.image_id == image_id)

    def image(name: str) -> Any:
        try:
            return store.get(name)
        except ImageNotFound:
            raise HTTPError(404, f"No such image: {name}") from None

    async def listing(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"dangling", "label", "reference", "before", "since"})
        imgs = await asyncio.to_thread(store.list, req.flag("all"))
        out = []
        for i in imgs:
            if "dangling" in filters:
                dangling = not i.repo_tags
                if (filters["dangling"][0].lower() in ("true", "1")) != dangling:
                    continue
            labels = i.config.labels or {}
            if any(k not in labels or (eq and labels[k] != v)
                   for k, eq, v in (lab.partition("=") for lab in filters.get("label", []))):
                continue
            if "reference" in filters and not any(_ref_match(t, f) for t in i.repo_tags for f in filters["reference"]):
                continue
            out.append(convert.image_summary(i, count(i.id), req.version))
        return Json(200, out)

    async def inspect(req: Request) -> Response:
        i = image(req.params["name"])
        parent = ""
        with contextlib.suppress(Exception):
            parent = store.parent(i.id)
        return Json(200, convert.image_inspect(i, parent, req.version))

    async def history(req: Request) -> Response:
        image(req.params["name"])
        rows = await asyncio.to_thread(store.history, req.params["name"])
        return Json(200, [{"Id": row["id"], "Created": int(row["created"]), "CreatedBy": row["created_by"],
                           "Tags": None, "Size": row["size"], "Comment": row["comment"]} for row in rows])

    async def tag(req: Request) -> Response:
        repo, tag_ = req.arg("repo"), req.arg("tag")
        if not repo:
            raise HTTPError(400, "tag needs a repository (?repo=)")
        image(req.params["name"])
        target = f"{repo}:{tag_}" if tag_ else repo
        await asyncio.to_thread(store.tag, req.params["name"], target)
        api.events.emit("image", "tag", store.get(target).id, {"name": target})
        return Body(201, b"")

    async def remove(req: Request) -> Response:
        name = req.params["name"]
        image(name)
        untagged, deleted = await asyncio.to_thread(store.remove, name, req.flag("force"), in_use)
        for u in untagged:
            api.events.emit("image", "untag", u, {"name": u})
        for d in deleted:
            api.events.emit("image", "delete", d, {"name": d})
        return Json(200, [{"Untagged": u} for u in untagged] + [{"Deleted": d} for d in deleted])

    async def prune(req: Request) -> Response:
        filters = parse_filters(req)
        check_filters(filters, {"dangling"})
        every = bool(filters.get("dangling")) and filters["dangling"][0].lower() in ("false", "0")
        untagged, deleted, reclaimed = await asyncio.to_thread(store.prune, every, in_use)
        items = [{"Untagged": u} for u in untagged] + [{"Deleted": d} for d in deleted]
        return Json(200, {"ImagesDeleted": items or None, "SpaceReclaimed": reclaimed})

    async def create(req: Request) -> Response:
        src = req.arg("fromSrc")
        if src and src != "-":
            raise HTTPError(400, "import from a URL is not supported by dockyard: send the tar as the body")
        if src == "-":
            return await _import(req)
        name = req.arg("fromImage")
        if not name:
            raise HTTPError(400, "create needs fromImage or fromSrc")
        if req.arg("platform"):
            raise HTTPError(400, "pull --platform is not supported by dockyard (it pulls the host's platform)")
        tag_ = req.arg("tag")
        ref = name if not tag_ or "@" in name else (f"{name}@{tag_}" if tag_.startswith("sha256:") else f"{name}:{tag_}")
        auth = decode_auth(req.headers.get("x-registry-auth", ""))

        async def chunks() -> AsyncIterator[bytes]:
            async for line in threaded_progress(lambda emit: registry.pull(store, ref, auth, emit)):
                yield line
            with contextlib.suppress(ImageError):
                api.events.emit("image", "pull", ref, {"name": ref})

        return Stream(200, chunks())

    async def _import(req: Request) -> Response:
        repo, tag_ = req.arg("repo"), req.arg("tag")
        ref = (f"{repo}:{tag_}" if tag_ else repo) or None
        changes = req.query.get("changes", [])
        message = req.arg("message")
        # unpacked as the body arrives (no temporary file), as the CLI's import
        try:
            i: Image | None = await consume(req.stream(), lambda f: store.import_tar(f, ref, changes, message))
            failed: Exception | None = None
        except (ImageError, OSError) as e:   # dockerd: a 200, and the error in the stream
            i, failed = None, e

        async def chunks() -> AsyncIterator[bytes]:
            if i is None:
                yield _error(failed or ImageError("import failed"))
                return
            api.events.emit("image", "import", i.id, {"name": ref or ""})
            yield _line({"status": i.id})

        return Stream(200, chunks())

    async def push(req: Request) -> Response:
        name = req.params["name"]
        tag_ = req.arg("tag")
        ref = f"{name}:{tag_}" if tag_ else name
        image(ref)
        auth = decode_auth(req.headers.get("x-registry-auth", ""))
        return Stream(200, threaded_progress(lambda emit: registry.push(store, ref, auth, emit)))

    async def save(req: Request) -> Response:
        names = req.query.get("names", []) if "name" not in req.params else [req.params["name"]]
        if not names:
            raise HTTPError(400, "save needs at least one image (?names=)")
        for n in names:
            image(n)
        # streamed as it is written (no temporary archive); every name was checked above
        return Stream(200, produce(lambda out: store.save(names, out, "docker")), "application/x-tar")

    async def load(req: Request) -> Response:
        # (?quiet only hides progress bars, which a load from a file has none of: the names still go out)
        # The body is read as it arrives, each layer unpacked as it passes: no temporary archive.
        names: list[str] = []
        try:
            imgs = await consume(req.stream(), lambda f: store.load(f, names))
            failed: ImageError | None = None
        except ImageError as e:   # dockerd: a 200, and the error in the stream
            imgs, failed = [], e

        async def chunks() -> AsyncIterator[bytes]:
            if failed is not None:
                yield _error(failed)
                return
            named = set(names)
            for i in imgs:
                api.events.emit("image", "load", i.id, {"name": ",".join(i.repo_tags)})
                # what the archive named, as dockerd says it (not every tag the image has here)
                tags = [t for t in i.repo_tags if t in named]
                for t in tags or [i.id]:
                    word = "image" if tags else "image ID"
                    yield _line({"stream": f"Loaded {word}: {t}\n"})

        return Stream(200, chunks())

    async def commit(req: Request) -> Response:
        c = api.m.get(req.arg("container"))
        if req.flag("pause", True) and c.state.status == "running":
            pass  # docker pauses while it copies; the snapshot's diff is read as is here
        body = await req.json() or {}
        changes = list(req.query.get("changes", []))
        for k, v in (body or {}).items():
            if not convert.empty(v):
                raise HTTPError(400, f"commit: the config field {k} is not supported by dockyard; "
                                     "use ?changes= (Dockerfile instructions)")
        repo, tag_ = req.arg("repo"), req.arg("tag")
        ref = (f"{repo}:{tag_}" if tag_ else repo) or None
        cc = c.config
        origin = {"Hostname": cc.hostname or c.id[:12], "User": cc.user, "Env": list(cc.env) or None,
                  "Cmd": list(c.args) or None, "Image": c.image_ref, "WorkingDir": cc.workdir,
                  "Labels": dict(cc.labels), "Tty": cc.tty, "OpenStdin": cc.open_stdin}
        i = await asyncio.to_thread(store.commit, c.snapshot, c.image_id, ref, changes, req.arg("comment"),
                                    container=c.id, container_config=origin)
        return Json(201, {"Id": i.id})

    async def build(req: Request) -> Response:
        from agent.images.build import Builder, BuildOptions, unpack_context
        from common.dockerignore import remove_ignored

        for unsupported in ("remote", "squash", "platform", "cpusetcpus", "memory", "memswap",
                            "cpushares", "cpuquota", "cpuperiod", "outputs"):
            v = req.arg(unsupported)
            if v and v not in ("0", "[]", "{}", "null", "false"):
                raise HTTPError(400, f"build: {unsupported} is not supported by dockyard")
        if req.arg("version") not in ("", "1"):
            raise HTTPError(400, "build: only the legacy builder (version=1) is served by dockyard")

        def jmap(key: str) -> dict[str, str]:
            raw = req.arg(key)
            if not raw:
                return {}
            try:
                val = json.loads(raw)
            except ValueError:
                raise HTTPError(400, f"build: {key} is not JSON") from None
            if not isinstance(val, dict):
                raise HTTPError(400, f"build: {key} must be a JSON object")
            return {str(k): str(v) for k, v in val.items() if v is not None}

        def jlist(key: str) -> list[str]:
            raw = req.arg(key)
            if not raw:
                return []
            try:
                val = json.loads(raw)
            except ValueError:
                raise HTTPError(400, f"build: {key} is not JSON") from None
            if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
                raise HTTPError(400, f"build: {key} must be a JSON list of strings")
            return val

        try:
            shm_size = int(req.arg("shmsize") or 0)
        except ValueError:
            raise HTTPError(400, f"build: shmsize {req.arg('shmsize')!r} is not a number of bytes") from None
        if shm_size < 0:
            raise HTTPError(400, "build: shmsize must not be negative")
        # extrahosts: repeated NAME:IP (docker's CLI), or one comma-separated value
        extra_hosts = [h for v in req.query.get("extrahosts", []) for h in v.split(",") if h]
        for h in extra_hosts:
            name_, sep, ip = h.partition(":")
            if not sep or not name_ or not ip:
                raise HTTPError(400, f"build: extrahosts {h!r}: expected NAME:IP")
        opts_tags = req.query.get("t", [])
        args, labels = jmap("buildargs"), jmap("labels")
        dockerfile_name = req.arg("dockerfile") or "Dockerfile"
        quiet = req.flag("q")
        auths_raw = req.headers.get("x-registry-config", "")
        auths: dict[str, registry.Auth] = {}
        if auths_raw:
            with contextlib.suppress(ValueError, binascii.Error):
                cfg = json.loads(base64.urlsafe_b64decode(auths_raw + "=" * (-len(auths_raw) % 4)) or b"{}")
                for host, a in (cfg or {}).items():
                    auths[host] = registry.Auth(str(a.get("username") or ""), str(a.get("password") or ""),
                                                str(a.get("identitytoken") or ""))
        work = store.tmp / f"build-{os.getpid()}-{secrets.token_hex(6)}"
        work.mkdir()
        try:
            with open(work / "context.tar", "wb") as ctx:
                async for chunk in req.stream():
                    ctx.write(chunk)
            with open(work / "context.tar", "rb") as ctx_in:
                await asyncio.to_thread(unpack_context, ctx_in, work / "context")
            (work / "context.tar").unlink()
            df_path = (work / "context" / dockerfile_name).resolve()
            if not str(df_path).startswith(str((work / "context").resolve()) + os.sep) or not df_path.is_file():
                raise HTTPError(400, f"Cannot locate specified Dockerfile: {dockerfile_name}")
            text = df_path.read_text()
            # what a client sent despite its .dockerignore (the Dockerfile and .dockerignore
            # themselves among them), as dockerd removes it, once the Dockerfile is read
            await asyncio.to_thread(remove_ignored, work / "context")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        opts = BuildOptions(dockerfile=text, dockerfile_name=dockerfile_name, tags=opts_tags, build_args=args,
                            no_cache=req.flag("nocache"), target=req.arg("target"),
                            network=req.arg("networkmode") or "bridge", labels=labels, shm_size=shm_size,
                            extra_hosts=extra_hosts, cache_from=jlist("cachefrom"))
        if opts.network == "default":
            opts.network = "bridge"

        async def puller(ref: str) -> str:
            from agent.images import reference as refs

            dom = refs.parse(ref).domain
            auth = auths.get(registry.config_key(dom)) or auths.get(dom) or registry.Auth()
            return await asyncio.to_thread(registry.pull, store, ref, auth)

        async def chunks() -> AsyncIterator[bytes]:
            held: list[bytes] = []   # "Successfully built/tagged" come after the aux line, as dockerd sends them
            try:
                async for ev in Builder(store, api.m, puller).build(work / "context", opts):
                    if ev.kind == "result":
                        yield _line({"aux": {"ID": ev.image_id}})
                        if quiet:   # docker build -q prints the id alone
                            yield _line({"stream": ev.image_id + "\n"})
                        for line in held:
                            yield line
                    elif ev.text and not quiet:
                        if ev.text.startswith("Successfully "):
                            held.append(_line({"stream": ev.text}))
                        else:
                            yield _line({"stream": ev.text})
            except Exception as e:
                yield _error(e)
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)

        return Stream(200, chunks())

    async def auth(req: Request) -> Response:
        body = await req.json() or {}
        if not isinstance(body, dict):
            raise HTTPError(400, "the auth body must be a JSON object")
        server = str(body.get("serveraddress") or registry.DOCKER_INDEX_SERVER)
        host = server.removeprefix("https://").removeprefix("http://").rstrip("/").removesuffix("/v1")
        if host == "index.docker.io":
            host = "docker.io"
        a = registry.Auth(str(body.get("username") or ""), str(body.get("password") or ""),
                          str(body.get("identitytoken") or ""))
        try:
            status = await asyncio.to_thread(registry.login, host, a)
        except registry.Unauthorized as e:
            raise HTTPError(401, str(e)) from e
        return Json(200, {"Status": status or "Login Succeeded", "IdentityToken": ""})

    r.add("POST", "/auth", auth)
    r.add("GET", "/images/json", listing)
    r.add("POST", "/images/create", create)
    r.add("POST", "/images/load", load)
    r.add("GET", "/images/get", save)
    r.add("POST", "/images/prune", prune)
    r.add("POST", "/build", build)
    r.add("POST", "/commit", commit)
    r.add("GET", "/images/{name:path}/json", inspect)
    r.add("GET", "/images/{name:path}/history", history)
    r.add("GET", "/images/{name:path}/get", save)
    r.add("POST", "/images/{name:path}/tag", tag)
    r.add("POST", "/images/{name:path}/push", push)
    r.add("DELETE", "/images/{name:path}", remove)



def _ref_match(tag: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(tag, pattern) or fnmatch.fnmatch(tag, pattern + ":*") or tag == pattern

