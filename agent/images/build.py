"""Dockerfile builds: the executor for what dockerfile.py parses.

Flow of one build (docker's classic builder, with its output)::

    context tar (from the client) -> unpacked with the layer checks into tmp/build-*/context
    for each stage needed by --target, for each instruction:   "Step 2/4 : COPY test /tmp/test"
        cache key = sha256(parent image id, instruction as expanded, content digest, build args)
        hit  -> " ---> Using cache" (the classic builder's words), the step's image again
        FROM      -> a local image, a pulled one, an earlier stage, or scratch (no image yet)
        COPY/ADD  -> prepare a snapshot on the parent's layers, write the files into its upper dir,
                     ImageStore.commit (one more layer), remove the snapshot
        RUN       -> a real container over the parent image through the ContainerManager (create,
                     start, stream its output, wait), ImageStore.commit of its snapshot; the
                     container is removed even when the step fails or the client goes away
        ENV, CMD, LABEL, ... -> ImageStore.derive: same layers, new config, an empty_layer history entry
    tag the last image; "Successfully built <id>"

Every step's image is kept (untagged, with its parent recorded) as the build cache; `image ls`
hides them as docker does and `image prune` removes them once nothing is built on them.
Blocking work runs in threads; the builder itself is an async generator of BuildEvents.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import os
import secrets
import shutil
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

from . import dockerfile as df
from .config import ImageConfig, apply_change
from .dockerfile import Dockerfile, DockerfileError, Instruction, Stage
from .errors import ImageError, ImageNotFound
from .imagestore import ImageStore
from .layers import apply_layer, compression_of, decompressed, tree_size
from .safefs import Root, UnsafePath, set_attrs, set_attrs_fd, write_all
from .tree import MergedTree, OutsideRoot, clean, split

DEFAULT_SHELL = ("/bin/sh", "-c")
CACHE_FILE = "build-cache.json"


@dataclass
class BuildOptions:
    dockerfile: str                                  # the Dockerfile's text
    dockerfile_name: str = "Dockerfile"
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    target: str = ""
    network: str = "bridge"                          # network mode of RUN containers
    labels: dict[str, str] = field(default_factory=dict)
    shm_size: int = 0                                # bytes of RUN containers' /dev/shm; 0: 64 MiB
    extra_hosts: list[str] = field(default_factory=list)  # NAME:IP lines of RUN containers' /etc/hosts
    cache_from: list[str] = field(default_factory=list)   # set: only these images (and their parents) are cache


@dataclass
class BuildEvent:
    kind: str             # "step" | "output" | "result"
    text: str = ""        # a line of progress or a chunk of a RUN's output
    step: int = 0
    total: int = 0
    cached: bool = False
    image_id: str = ""


class ContainerRunner(Protocol):
    """What a RUN step needs of the container manager (agent/containers.py's ContainerManager)."""

    def create(self, cfg: Any) -> Any: ...
    async def start(self, ref: str, hold: bool = False) -> Any: ...
    async def wait(self, ref: str) -> Any: ...
    async def remove(self, ref: str, force: bool = False) -> None: ...
    def logs(self, ref: str, follow: bool = False, tail: int = -1, since: float = 0,
             until: float = 0) -> AsyncIterator[tuple[str, bytes, float]]: ...


Puller = Callable[[str], Awaitable[str]]  # reference -> image id, pulling it into the store


class BuildCache:
    """Step key -> image id, in one JSON file rewritten atomically. Entries whose image is gone
    are ignored (and dropped on the next write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def put(self, key: str, image_id: str, alive: Callable[[str], bool]) -> None:
        entries = {k: v for k, v in self._read().items() if alive(v)}
        entries[key] = image_id
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(entries, sort_keys=True))
        os.replace(tmp, self.path)


def cache_key(*parts: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --- the context ------------------------------------------------------------------------------------

def unpack_context(fileobj: IO[bytes], dest: Path) -> None:
    """The build context tar from the client, with the same hostile-input checks as a layer."""
    dest.mkdir(parents=True, exist_ok=True)
    stream, _ = decompressed(fileobj)
    apply_layer(stream, dest, what="build context")


class ContextCache:
    """Unpacked build contexts by the digest of their tar, kept for the next build of the same
    context: a rebuild whose steps are all cached then neither unpacks nor removes a file (for a
    context of 1,000 small files that was most of the build). The KEEP most recently used are kept,
    each of at most MAX_BYTES of tar, below the image store's tmp/ (which the agent empties when it
    starts); a context in use by a build is never removed. Builds only read their context."""

    KEEP = 2
    MAX_BYTES = 256 << 20

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._in_use: dict[Path, int] = {}
        self._digests: dict[tuple[Path, object], str] = {}

    def digest(self, context: Path, what: object, compute: Callable[[], str]) -> str:
        """The digest of sources `what` in this context: remembered for a kept context, which is
        named by its own digest and never changes (a cached COPY of 1,000 files read them all)."""
        if context.parent != self.root:
            return compute()
        key = (context, what)
        with self._lock:
            known = self._digests.get(key)
        if known is None:
            known = self._digests[key] = compute()
        return known

    def acquire(self, tar: Path, digest: str, work: Path) -> Path:
        """The unpacked context of this tar (unpacked into `work` first if not cached); release() it."""
        d = self.root / digest.removeprefix("sha256:")
        with self._lock:
            hit = d.is_dir()
            if hit:
                self._in_use[d] = self._in_use.get(d, 0) + 1
                os.utime(d)
        if hit:
            return d
        fresh = work / "context"
        with open(tar, "rb") as f:
            unpack_context(f, fresh)
        if tar.stat().st_size > self.MAX_BYTES:
            return fresh
        self.root.mkdir(exist_ok=True)
        with self._lock:
            try:
                os.rename(fresh, d)
            except OSError:  # a build of the same context published it meanwhile: ours goes with `work`
                if not d.is_dir():
                    return fresh
            self._in_use[d] = self._in_use.get(d, 0) + 1
        return d

    def _kept(self) -> list[Path]:
        try:
            return [p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
        except FileNotFoundError:
            return []

    def usage(self) -> tuple[int, int, int, int]:
        """(contexts kept, of them in use by a build now, bytes of their files, bytes of those no
        build uses): system df's Build Cache row, so the disk they take is not hidden."""
        with self._lock:
            in_use = set(self._in_use)
        count = active = size = free = 0
        for p in self._kept():
            n = tree_size(p)
            count += 1
            size += n
            if p in in_use:
                active += 1
            else:
                free += n
        return count, active, size, free

    def prune(self) -> int:
        """Remove every kept context no build uses now; the bytes of their files."""
        with self._lock:
            trash = self._drop([p for p in self._kept() if p not in self._in_use])
        freed = 0
        for p in trash:
            freed += tree_size(p)
            shutil.rmtree(p, ignore_errors=True)
        return freed

    def _drop(self, old: list[Path]) -> list[Path]:
        """Under the lock: the contexts are renamed out of the cache's names at once (a build that
        asks for one now unpacks its own), their files are removed after, outside the lock."""
        trash = []
        for p in old:
            for key in [k for k in self._digests if k[0] == p]:
                del self._digests[key]
            gone = p.with_name(f".gone-{p.name}-{secrets.token_hex(4)}")
            with contextlib.suppress(OSError):
                os.rename(p, gone)
                trash.append(gone)
        return trash

    def release(self, context: Path) -> None:
        with self._lock:
            if context in self._in_use:
                self._in_use[context] -= 1
                if not self._in_use[context]:
                    del self._in_use[context]
            kept = sorted(self._kept(), key=lambda p: p.stat().st_mtime, reverse=True)
            trash = self._drop([p for p in kept[self.KEEP:] if p not in self._in_use])
        for p in trash:
            shutil.rmtree(p, ignore_errors=True)


# --- the executor ------------------------------------------------------------------------------------

@dataclass
class _State:
    stage: Stage
    image: str | None = None                         # None: scratch and nothing built yet
    config: ImageConfig = field(default_factory=ImageConfig)
    args: dict[str, str] = field(default_factory=dict)
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))


class Builder:
    def __init__(self, store: ImageStore, runner: ContainerRunner | None = None,
                 pull: Puller | None = None, contexts: ContextCache | None = None) -> None:
        self.store = store
        self.runner = runner
        self.pull = pull
        self.cache = BuildCache(store.root / CACHE_FILE)
        self.contexts = contexts  # where a kept context's COPY digests are remembered
        self._sources_of: tuple[tuple[str, ...], set[str]] = ((), set())   # cache_from -> its images

    def _alive(self, image_id: str) -> bool:
        try:
            self.store.get(image_id)
            return True
        except ImageError:
            return False

    def _hit(self, key: str, opts: BuildOptions) -> str | None:
        """The cached image of this step, if there is one the build may use: none with --no-cache;
        with --cache-from, only one of those images' own chains (docker's classic builder)."""
        if opts.no_cache:
            return None
        image_id = self.cache.get(key)
        if not image_id or not self._alive(image_id):
            return None
        if opts.cache_from and image_id not in self._sources(opts.cache_from):
            return None
        return image_id

    def _sources(self, refs: list[str]) -> set[str]:
        """The images of --cache-from and every parent of theirs; names that resolve to nothing are
        left out, as docker leaves them."""
        key = tuple(refs)
        if self._sources_of[0] != key:
            ids: set[str] = set()
            for ref in refs:
                try:
                    cur = self.store.get(ref).id
                except ImageError:
                    continue
                while cur and cur not in ids:
                    ids.add(cur)
                    cur = self.store.parent(cur)
            self._sources_of = (key, ids)
        return self._sources_of[1]

    async def build(self, context: Path, opts: BuildOptions) -> AsyncIterator[BuildEvent]:
        dfile = df.parse(opts.dockerfile, opts.dockerfile_name)
        name = opts.dockerfile_name
        stages = _needed_stages(dfile, opts.target)
        total = sum(1 + len(s.instructions) for s in stages)
        global_args = _global_args(dfile, opts.build_args)
        used_args: set[str] = set()
        results: dict[int, str | None] = {}
        step = 0
        ctx_tree = MergedTree([context])
        final: _State | None = None
        for stage in stages:
            state = _State(stage)
            # FROM
            step += 1
            ins = stage.from_instruction
            yield BuildEvent("step", f"Step {step}/{total} : {ins.original}\n", step, total)
            try:
                base = df.expand(stage.base, global_args, dfile.escape)
            except ValueError as e:
                raise DockerfileError(str(e), ins.line, name) from None
            used_args.update(k for k in global_args if k in stage.base)
            state.image = await self._from(dfile, base, results, ins, name)
            if state.image:
                img = await asyncio.to_thread(self.store.get, state.image)
                state.config = img.config
                yield BuildEvent("step", f" ---> {_short(state.image)}\n", step, total)
            if state.config.on_build:
                # the base's ONBUILD triggers run first, as docker runs them; they are not
                # inherited further (the new image's OnBuild is its own ONBUILDs only)
                triggers = state.config.on_build
                state.config = replace(state.config, on_build=[])
                yield BuildEvent("step", f"# Executing {len(triggers)} build trigger"
                                 f"{'s' if len(triggers) > 1 else ''}\n", step, total)
                for text in triggers:
                    trig = df.trigger(text, ins.line, name)
                    async for ev in self._step(state, trig, dfile, global_args, opts, ctx_tree, results, used_args):
                        ev.step, ev.total = step, total
                        yield ev
                if state.image:
                    yield BuildEvent("step", f" ---> {_short(state.image)}\n", step, total)
            for ins in stage.instructions:
                step += 1
                yield BuildEvent("step", f"Step {step}/{total} : {ins.original}\n", step, total)
                async for ev in self._step(state, ins, dfile, global_args, opts, ctx_tree, results, used_args):
                    ev.step, ev.total = step, total
                    yield ev
                if state.image:
                    yield BuildEvent("step", f" ---> {_short(state.image)}\n", step, total)
            results[stage.index] = state.image
            final = state
        assert final is not None
        if not final.image:
            img = await asyncio.to_thread(self.store.derive, None, final.config, "")
            final.image = img.id
        if opts.labels:
            cfg = replace(final.config, labels={**final.config.labels, **opts.labels})
            img = await asyncio.to_thread(self.store.derive, final.image, cfg, "")
            final.image = img.id
        unused = sorted(set(opts.build_args) - used_args)
        if unused:
            yield BuildEvent("step", f"[Warning] One or more build-args {unused} were not consumed\n")
        yield BuildEvent("step", f"Successfully built {_short(final.image)}\n")
        for tag in opts.tags:
            await asyncio.to_thread(self.store.tag, final.image, tag)
            yield BuildEvent("step", f"Successfully tagged {tag}\n")
        yield BuildEvent("result", image_id=final.image)

    async def _from(self, dfile: Dockerfile, base: str, results: Mapping[int, str | None],
                    ins: Instruction, name: str) -> str | None:
        if base == "scratch":
            return None
        for s in dfile.stages:
            if s.name and s.name == base.lower() and s.index in results:
                return results[s.index]
        try:
            return (await asyncio.to_thread(self.store.get, base)).id
        except ImageNotFound:
            if self.pull is None:
                raise DockerfileError(f"FROM {base}: no such image, and no registry to pull it from",
                                      ins.line, name) from None
        except ImageError as e:
            raise DockerfileError(f"FROM {base}: {e}", ins.line, name) from None
        try:
            return await self.pull(base)
        except ImageError as e:
            raise DockerfileError(f"FROM {base}: {e}", ins.line, name) from None

    async def _step(self, state: _State, ins: Instruction, dfile: Dockerfile, global_args: Mapping[str, str],
                    opts: BuildOptions, ctx_tree: MergedTree, results: Mapping[int, str | None],
                    used_args: set[str]) -> AsyncIterator[BuildEvent]:
        name = opts.dockerfile_name
        env = {**state.args, **state.config.env_dict()}
        kw = ins.keyword
        try:
            if kw == "ARG":
                for key, value in df.key_values("ARG", ins.args, env, dfile.escape):
                    if key in opts.build_args:
                        state.args[key] = opts.build_args[key]
                        used_args.add(key)
                    elif value != "\0":
                        state.args[key] = value
                    elif key in global_args:
                        state.args[key] = global_args[key]
                    else:
                        state.args.setdefault(key, "")
                return
            if kw == "SHELL":
                shell = ins.json_args()
                if not shell:
                    raise DockerfileError('SHELL requires the exec form: SHELL ["executable", "parameters"]',
                                          ins.line, name)
                state.shell = shell
                return
            if kw == "RUN":
                async for ev in self._run(state, ins, opts):
                    yield ev
                return
            if kw in ("COPY", "ADD"):
                image, cached = await asyncio.to_thread(
                    self._copy, state, ins, dfile, env, opts, ctx_tree, results)
                if cached:
                    yield BuildEvent("step", " ---> Using cache\n", cached=True)
                state.image = image
                return
            # Config-only instructions.
            config = self._config_step(state, ins, env, dfile.escape)
            original = ins.original if kw not in EXPANDED_DISPLAY else f"{kw} {df.expand(ins.args, env, dfile.escape)}"
            key = cache_key(state.image or "scratch", "config", original, config.to_oci())
            cached_id = self._hit(key, opts)
            if cached_id:
                yield BuildEvent("step", " ---> Using cache\n", cached=True)
                state.image, state.config = cached_id, config
                return
            img = await asyncio.to_thread(self.store.derive, state.image, config, f"/bin/sh -c #(nop)  {original}")
            self.cache.put(key, img.id, self._alive)
            state.image, state.config = img.id, config
        except DockerfileError:
            raise
        except (ImageError, ValueError, OSError) as e:
            raise DockerfileError(f"{kw}: {e}", ins.line, name) from None

    def _config_step(self, state: _State, ins: Instruction, env: Mapping[str, str], escape: str) -> ImageConfig:
        kw = ins.keyword
        cfg = state.config
        if kw == "ENV":
            items = list(cfg.env)
            for key, value in df.key_values("ENV", ins.args, env, escape):
                items = [e for e in items if e.partition("=")[0] != key]
                items.append(f"{key}={value}")
                env = {**env, key: value}
            return replace(cfg, env=items)
        if kw == "LABEL":
            return replace(cfg, labels={**cfg.labels, **dict(df.key_values("LABEL", ins.args, env, escape))})
        if kw == "MAINTAINER":
            return replace(cfg, labels={**cfg.labels, "maintainer": ins.args})
        if kw == "ONBUILD":
            return replace(cfg, on_build=[*cfg.on_build, ins.args])
        if kw in ("CMD", "ENTRYPOINT"):
            new = apply_change(cfg, f"{kw} {ins.args}", shell=state.shell)
            return new
        if kw == "HEALTHCHECK":
            flags = " ".join(f"--{k}={v}" for k, v in ins.flags.items())
            return apply_change(cfg, f"HEALTHCHECK {flags} {ins.args}".replace("  ", " "), shell=state.shell)
        # EXPOSE, USER, WORKDIR, STOPSIGNAL: expanded here, "$" kept literal for apply_change.
        text = df.expand(ins.args, env, escape)
        if kw != "EXPOSE":
            text = text.replace("$", "\\$")
        return apply_change(cfg, f"{kw} {text}")

    # --- RUN ----------------------------------------------------------------------------------------

    async def _run(self, state: _State, ins: Instruction, opts: BuildOptions) -> AsyncIterator[BuildEvent]:
        name = opts.dockerfile_name
        argv = ins.json_args()
        if argv is None:
            argv = [*state.shell, ins.args]
        if not argv:
            raise DockerfileError("RUN needs a command", ins.line, name)
        image_env = state.config.env_dict()
        arg_env = {k: v for k, v in sorted(state.args.items()) if k not in image_env}
        created_by = " ".join(argv)
        if arg_env:
            created_by = f"|{len(arg_env)} " + " ".join(f"{k}={v}" for k, v in arg_env.items()) + " " + created_by
        key = cache_key(state.image or "scratch", "RUN", argv, arg_env, ins.flags.get("network", opts.network))
        cached_id = self._hit(key, opts)
        if cached_id:
            yield BuildEvent("step", " ---> Using cache\n", cached=True)
            state.image = cached_id
            return
        if self.runner is None:
            raise DockerfileError("RUN needs the agent's container manager", ins.line, name)
        if not state.image:
            state.image = (await asyncio.to_thread(self.store.derive, None, state.config, "")).id
        from agent.model import ContainerConfig

        network = ins.flags.get("network", opts.network)
        network = {"default": "bridge", "sandbox": "bridge"}.get(network, network)
        cfg = ContainerConfig(
            image=state.image, cmd=list(argv), entrypoint=[], entrypoint_set=True,
            env=[f"{k}={v}" for k, v in arg_env.items()], workdir=state.config.workdir,
            user=state.config.user, network_mode=network, labels={"dockyard.build": "1"},
            shm_size=opts.shm_size, extra_hosts=list(opts.extra_hosts),
        )
        runner = self.runner
        try:
            c = await asyncio.to_thread(runner.create, cfg)
        except Exception as e:
            raise DockerfileError(f"RUN: creating the container failed: {e}", ins.line, name) from None
        try:
            yield BuildEvent("step", f" ---> Running in {c.id[:12]}\n")
            try:
                await runner.start(c.id)
            except Exception as e:
                raise DockerfileError(f"RUN: {e}", ins.line, name) from None
            async for stream, data, _ts in runner.logs(c.id, follow=True):
                text = data.decode(errors="replace")
                # the classic builder's marking of a RUN's stderr: bright red, reset after
                yield BuildEvent("output", f"\x1b[91m{text}\x1b[0m" if stream == "stderr" else text)
            done = await runner.wait(c.id)
            code = int(done.state.exit_code)
            if code != 0:
                shown = json.dumps(argv) if ins.json_args() is not None else " ".join(argv)
                raise DockerfileError(f"The command '{shown}' returned a non-zero code: {code}", ins.line, name,
                                      code=code)
            img = await asyncio.to_thread(self.store.commit, c.snapshot, state.image, None, (), "", created_by)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(runner.remove(c.id, force=True))
        yield BuildEvent("step", f"Removing intermediate container {c.id[:12]}\n")
        self.cache.put(key, img.id, self._alive)
        state.image = img.id

    # --- COPY and ADD ---------------------------------------------------------------------------------

    def _copy(self, state: _State, ins: Instruction, dfile: Dockerfile, env: Mapping[str, str],
              opts: BuildOptions, ctx_tree: MergedTree, results: Mapping[int, str | None]) -> tuple[str, bool]:
        kw, name = ins.keyword, opts.dockerfile_name
        words = ins.json_args()
        if words is None:
            words = df.words(ins.args, env, dfile.escape)
        else:
            words = [df.expand(w, env, dfile.escape) for w in words]
        if len(words) < 2:
            raise DockerfileError(f"{kw} requires at least two arguments: {kw} <src>... <dest>", ins.line, name)
        srcs, dest = words[:-1], words[-1]
        # Where the sources come from: the context, an earlier stage, or an image.
        strict = True
        source = ctx_tree
        src_name = "build context"
        if "from" in ins.flags:
            if kw == "ADD":
                raise DockerfileError("ADD does not take --from; use COPY --from", ins.line, name)
            ref = df.expand(ins.flags["from"], env, dfile.escape)
            stage = dfile.stage(ref)
            if stage is not None and stage.index >= state.stage.index:
                raise DockerfileError(f"COPY --from={ref}: a stage can only copy from an earlier stage",
                                      ins.line, name)
            if stage is not None:
                image_id = results.get(stage.index)
            else:
                try:
                    image_id = self.store.get(ref).id
                except ImageError as e:
                    raise DockerfileError(f"COPY --from={ref}: {e}", ins.line, name) from None
            source = MergedTree(self._layer_dirs(image_id))
            strict = False
            src_name = f"stage {ref}"
        entries: list[tuple[str, list[str]]] = []  # (source as written, resolved components)
        for src in srcs:
            if kw == "ADD" and src.startswith(("http://", "https://", "git@")):
                raise DockerfileError(f"ADD {src}: remote sources are not supported; fetch them with RUN",
                                      ins.line, name)
            parts = _relative_parts(src)
            if parts is None and strict:
                raise DockerfileError(f"{kw} failed: forbidden path outside the build context: {src}",
                                      ins.line, name)
            matches = _glob(source, parts or [], strict) if _has_magic(src) else [parts or []]
            if not matches:
                raise DockerfileError(f"{kw} failed: no source files were specified by {src!r} in the {src_name}",
                                      ins.line, name)
            for m in matches:
                try:
                    resolved = source.resolve(m, strict=strict)
                except OutsideRoot:
                    raise DockerfileError(f"{kw} failed: forbidden path outside the build context: {src}",
                                          ins.line, name) from None
                if source.lookup(resolved) is None:
                    raise DockerfileError(
                        f"{kw} failed: file not found in {src_name}: stat {src}: file does not exist",
                        ins.line, name)
                entries.append((src, resolved))
        dest_abs = dest if dest.startswith("/") else (state.config.workdir or "/").rstrip("/") + "/" + dest
        dest_is_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.")
        if len(entries) > 1 and not dest_is_dir:
            raise DockerfileError(f"When using {kw} with more than one source file, the destination must be "
                                  f"a directory and end with a /", ins.line, name)
        lower = MergedTree(self._layer_dirs(state.image))
        uid_gid = _chown(ins.flags.get("chown", ""), lower, ins, name) if "chown" in ins.flags else None
        chmod = _chmod(ins.flags.get("chmod", ""), ins, name) if "chmod" in ins.flags else None
        # The cache key covers every byte and attribute that would be copied.
        def content_digest() -> str:
            h = hashlib.sha256()
            for src, resolved in entries:
                h.update(f"{src}\0".encode())
                _digest_tree(source, resolved, h, kw == "ADD")
            return "sha256:" + h.hexdigest()

        what = (kw, tuple((src, tuple(resolved)) for src, resolved in entries))
        if source is ctx_tree and self.contexts is not None:
            digest = self.contexts.digest(ctx_tree.layers[0], what, content_digest)
        else:
            digest = content_digest()
        key = cache_key(state.image or "scratch", kw, clean(dest_abs) + ("/" if dest_is_dir else ""),
                        [s for s, _ in entries], digest, uid_gid, chmod)
        cached_id = self._hit(key, opts)
        if cached_id:
            return cached_id, True
        snap = f"build-{os.getpid()}-{secrets.token_hex(6)}"
        base_chain = self.store.get(state.image).chain_id if state.image else ""
        self.store.snapshotter.prepare(snap, base_chain)
        try:
            upper = self.store.snapshotter.layer_dirs(snap)[0]
            writer = _LayerWriter(upper, lower)
            try:
                self._write(writer, kw, source, entries, writer.resolve_dest(split(dest_abs)), dest_is_dir,
                            uid_gid, chmod)
            finally:
                writer.close()
            kind = "dir" if len(entries) == 1 and entries[0][1] and _is_dir(source, entries[0][1]) else "file"
            if len(entries) > 1:
                kind = "multi"
            created_by = f"/bin/sh -c #(nop) {kw} {kind}:{digest.removeprefix('sha256:')} in {dest_abs} "
            img = self.store.commit(snap, state.image, None, (), "", created_by)
        finally:
            with contextlib.suppress(ImageError):
                self.store.snapshotter.remove(snap)
        self.cache.put(key, img.id, self._alive)
        return img.id, False

    def _write(self, writer: _LayerWriter, kw: str, source: MergedTree, entries: list[tuple[str, list[str]]],
               dest: list[str], dest_is_dir: bool, uid_gid: tuple[int, int] | None, chmod: int | None) -> None:
        dest_dir_exists = _is_dir(writer.view, dest)
        for _src, resolved in entries:
            found = source.lookup(resolved)
            assert found is not None
            path, st = found
            if stat.S_ISDIR(st.st_mode):
                writer.copy_tree(source, resolved, dest, uid_gid, chmod)
            elif kw == "ADD" and stat.S_ISREG(st.st_mode) and _is_archive(path):
                self._extract(path, writer, dest, uid_gid)
            else:
                target = dest
                if dest_is_dir or dest_dir_exists:
                    target = [*dest, resolved[-1]] if resolved else dest
                writer.copy_entry(source, resolved, target, uid_gid, chmod)

    def _layer_dirs(self, image_id: str | None) -> list[Path]:
        if not image_id:
            return []
        chain = self.store.get(image_id).chain_id
        return self.store.snapshotter.layer_dirs(chain) if chain else []

    def _extract(self, archive: Path, writer: _LayerWriter, dest: list[str], uid_gid: tuple[int, int] | None) -> None:
        tmp = self.store.tmp / f"add-{os.getpid()}-{secrets.token_hex(6)}"
        tmp.mkdir()
        try:
            with open(archive, "rb") as f:
                stream, _ = decompressed(f)
                apply_layer(stream, tmp, what=f"ADD {archive.name}")
            tree = MergedTree([tmp])
            writer.copy_tree(tree, [], dest, uid_gid, None, keep_owner=uid_gid is None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


EXPANDED_DISPLAY = ("ENV", "LABEL", "EXPOSE", "USER", "WORKDIR", "STOPSIGNAL")


class _LayerWriter:
    """Writes copied files into a snapshot's upper dir, through safefs (no link is ever followed on
    the host side). Destinations are resolved inside the image's root first, as docker does: a
    path under a symlinked directory of the base image (merged-/usr's /lib -> usr/lib) lands where
    the link leads, and the link stays. Parent directories that exist in the layers below are
    created in the upper dir with their attributes (as overlay's copy-up would), new ones 0755 root."""

    def __init__(self, upper: Path, lower: MergedTree) -> None:
        self.upper = upper
        self.lower = lower
        self.root = Root(upper)
        self.view = MergedTree([upper, *lower.layers])

    def close(self) -> None:
        self.root.close()

    def resolve_dest(self, parts: Sequence[str]) -> list[str]:
        """``parts`` with its symlinks followed inside the root; a final symlink only when it leads
        to a directory (copying *into* it), else the link itself is replaced."""
        near = self.view.resolve(parts, follow_final=False)
        full = self.view.resolve(near)
        if full != near:
            found = self.view.lookup(full)
            if found is not None and stat.S_ISDIR(found[1].st_mode):
                return full
        return near

    def _copy_up(self, parts: Sequence[str]) -> Callable[[int, str, int], None]:
        def made(parent: int, name: str, i: int) -> None:
            below = self.lower.lookup(list(parts[: i + 1]))
            if below is not None and stat.S_ISDIR(below[1].st_mode):
                bst = below[1]
                set_attrs(parent, name, stat.S_IMODE(bst.st_mode), (bst.st_uid, bst.st_gid),
                          (bst.st_atime_ns, bst.st_mtime_ns))
        return made

    def _replace_file(self, parent: int, name: str, st: os.stat_result) -> bool:
        self.root.remove(parent, name, st)  # a file where a directory must be: the directory wins
        os.mkdir(name, 0o755, dir_fd=parent)
        return True

    def _parents(self, parts: Sequence[str]) -> int:
        """A descriptor of the upper dir at (resolved) ``parts``, made as needed; the caller closes it."""
        try:
            return self.root.opendir(parts, create=True, replace=self._replace_file, made=self._copy_up(parts))
        except UnsafePath as e:
            raise ImageError(f"cannot copy to /{'/'.join(parts)}: /{e.where} is a symlink") from None

    def copy_entry(self, src: MergedTree, src_parts: Sequence[str], dest: Sequence[str],
                   owner: tuple[int, int] | None, chmod: int | None, keep_owner: bool = False) -> None:
        found = src.lookup(list(src_parts))
        if found is None:
            return
        path, st = found
        if stat.S_ISDIR(st.st_mode):
            self.copy_tree(src, src_parts, dest, owner, chmod, keep_owner)
            return
        if not dest:
            raise ImageError(f"cannot copy a file onto / ({'/'.join(src_parts)})")
        if not (stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return  # sockets and devices are not copied
        base = dest[-1]
        parent = self._parents(dest[:-1])
        try:
            with contextlib.suppress(FileNotFoundError):
                self.root.remove(parent, base)
            uid, gid = owner if owner is not None else ((st.st_uid, st.st_gid) if keep_owner else (0, 0))
            times = (st.st_atime_ns, st.st_mtime_ns)
            mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(path), base, dir_fd=parent)
                set_attrs(parent, base, None, (uid, gid), None, symlink=True)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(base, 0o600, dir_fd=parent)
                set_attrs(parent, base, mode, (uid, gid), times)
            else:
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=parent)
                try:
                    with open(path, "rb") as fin:
                        while chunk := fin.read(1 << 20):
                            write_all(fd, chunk)
                    set_attrs_fd(fd, mode, (uid, gid), times)
                finally:
                    os.close(fd)
        finally:
            os.close(parent)

    def copy_tree(self, src: MergedTree, src_parts: Sequence[str], dest: Sequence[str],
                  owner: tuple[int, int] | None, chmod: int | None, keep_owner: bool = False) -> None:
        """The contents of directory ``src_parts`` into directory ``dest`` (COPY dir/ /dest/)."""
        found = src.lookup(list(src_parts)) if src_parts else None
        d = self._parents(dest)
        try:
            if found is not None and dest:
                st = found[1]
                uid, gid = owner if owner is not None else ((st.st_uid, st.st_gid) if keep_owner else (0, 0))
                set_attrs(d, ".", chmod if chmod is not None else stat.S_IMODE(st.st_mode), (uid, gid), None)
        finally:
            os.close(d)
        for name in src.listdir(list(src_parts)):
            child = [*src_parts, name]
            entry = src.lookup(child)
            if entry is None:
                continue
            if stat.S_ISDIR(entry[1].st_mode):
                target = self.resolve_dest([*dest, name])
                self.copy_tree(src, child, target, owner, chmod, keep_owner)
                d = self._parents(target)
                try:
                    set_attrs(d, ".", None, None, (entry[1].st_atime_ns, entry[1].st_mtime_ns))
                finally:
                    os.close(d)
            else:
                self.copy_entry(src, child, [*dest, name], owner, chmod, keep_owner)
        if found is not None and dest:
            d = self._parents(dest)
            try:
                set_attrs(d, ".", None, None, (found[1].st_atime_ns, found[1].st_mtime_ns))
            finally:
                os.close(d)


def _lstat(p: Path) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _is_dir(tree: MergedTree, parts: list[str]) -> bool:
    try:
        resolved = tree.resolve(parts)
    except ImageError:
        return False
    found = tree.lookup(resolved)
    return found is not None and stat.S_ISDIR(found[1].st_mode)


def _is_archive(path: Path) -> bool:
    """A tar (plain, gzip, bzip2, xz or zstd) by its content, as docker's ADD decides."""
    try:
        with open(path, "rb") as f:
            if compression_of(f.read(8)):
                f.seek(0)
                stream, _ = decompressed(f)
                head = stream.read(512)
            else:
                f.seek(0)
                head = f.read(512)
    except Exception:   # a corrupt stream (gzip's OSError, lzma's LZMAError, zstd's own): copied as docker does
        return False
    return len(head) >= 262 and head[257:262] == b"ustar"


def _digest_tree(tree: MergedTree, parts: list[str], h: Any, follow_archives: bool) -> None:
    found = tree.lookup(parts)
    if found is None:
        return
    path, st = found
    rel = "/".join(parts)
    mode = st.st_mode
    h.update(f"{rel}\0{stat.S_IFMT(mode)}\0{stat.S_IMODE(mode)}\0{st.st_uid if follow_archives else 0}\0".encode())
    if stat.S_ISREG(mode):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    elif stat.S_ISLNK(mode):
        h.update(os.readlink(path).encode())
    elif stat.S_ISDIR(mode):
        for name in tree.listdir(parts):
            _digest_tree(tree, [*parts, name], h, follow_archives)


def _relative_parts(src: str) -> list[str] | None:
    """Components of a context path, or None when it leads outside the context (../x)."""
    out: list[str] = []
    for p in src.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(p)
    return out


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _glob(tree: MergedTree, parts: list[str], strict: bool) -> list[list[str]]:
    """Go's filepath.Match applied component by component, as docker matches COPY sources."""
    found: list[list[str]] = [[]]
    for comp in parts:
        nxt: list[list[str]] = []
        for base in found:
            if not _has_magic(comp):
                if tree.lookup([*base, comp]) is not None:
                    nxt.append([*base, comp])
                continue
            try:
                resolved = tree.resolve(base, strict=strict)
            except OutsideRoot:
                continue
            pattern = comp.replace("[^", "[!")
            for name in tree.listdir(resolved):
                if fnmatch.fnmatchcase(name, pattern):
                    nxt.append([*base, name])
        found = nxt
    return found


def _chown(spec: str, tree: MergedTree, ins: Instruction, name: str) -> tuple[int, int]:
    user, _, group = spec.partition(":")

    def lookup(file: str, key: str) -> int:
        if key.isdigit():
            return int(key)
        found = tree.lookup(tree.resolve(split(file)))
        if found is not None:
            for line in found[0].read_text(errors="replace").splitlines():
                fields = line.split(":")
                if len(fields) >= 3 and fields[0] == key and fields[2].isdigit():
                    return int(fields[2])
        raise DockerfileError(f"{ins.keyword} --chown={spec}: unable to find {'user' if 'passwd' in file else 'group'} "
                              f"{key} in the image's {file}", ins.line, name)

    if not user:
        raise DockerfileError(f"{ins.keyword} --chown={spec}: a user is required", ins.line, name)
    uid = lookup("/etc/passwd", user)
    if group:
        gid = lookup("/etc/group", group)
    elif user.isdigit():
        gid = uid
    else:
        gid = _primary_gid(tree, user, uid)
    return uid, gid


def _primary_gid(tree: MergedTree, user: str, uid: int) -> int:
    found = tree.lookup(tree.resolve(split("/etc/passwd")))
    if found is not None:
        for line in found[0].read_text(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == user and fields[3].isdigit():
                return int(fields[3])
    return uid


def _chmod(spec: str, ins: Instruction, name: str) -> int:
    try:
        mode = int(spec, 8)
    except ValueError:
        raise DockerfileError(f"{ins.keyword} --chmod={spec}: must be an octal mode like 0755", ins.line, name) from None
    if not 0 <= mode <= 0o7777:
        raise DockerfileError(f"{ins.keyword} --chmod={spec}: out of range", ins.line, name)
    return mode


def _needed_stages(dfile: Dockerfile, target: str) -> list[Stage]:
    """The target stage (the last by default) and the stages it builds on, in Dockerfile order."""
    if target:
        stage = dfile.stage(target)
        if stage is None:
            raise DockerfileError(f"target stage {target!r} could not be found", 0, dfile.filename)
    else:
        stage = dfile.stages[-1]
    needed: set[int] = set()

    def visit(s: Stage) -> None:
        if s.index in needed:
            return
        needed.add(s.index)
        refs = [s.base] + [i.flags["from"] for i in s.instructions if "from" in i.flags]
        for ref in refs:
            dep = dfile.stage(ref)
            if dep is not None and dep.index < s.index:
                visit(dep)

    visit(stage)
    return [s for s in dfile.stages if s.index in needed]


def _global_args(dfile: Dockerfile, build_args: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in dfile.global_args:
        try:
            pairs = df.key_values("ARG", ins.args, out, dfile.escape)
        except ValueError as e:
            raise DockerfileError(str(e), ins.line, dfile.filename) from None
        for key, value in pairs:
            if key in build_args:
                out[key] = build_args[key]
            elif value != "\0":
                out[key] = value
    return out


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]

