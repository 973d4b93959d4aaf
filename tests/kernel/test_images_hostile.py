"""Hostile layers through every entry point that unpacks: the snapshotter (pull, load and restore all
end there), `import`, `load` of a docker-archive and of an OCI layout, `pull` from a registry, and
`build` with ADD of a tar. Each case is a stack of layers built to reach the host: links through
every component, a directory replaced by a symlink to a host file (the mode 6777 / owner 4242
attack), hardlinks out and to symlinks, whiteouts and opaque dirs mixed with links, links replaced
between layers, `..` and absolute names. After each one the host is checked: every file in the
victim tree keeps its mode, owner, times and content, and nothing new appears outside the store.

Runs as root (ownership, whiteouts need it), on the real filesystem.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.server
import io
import json
import os
import stat
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.images import ImageError, ImageStore, InvalidArchive, safefs
from agent.images import archive as image_archive
from agent.images import registry as reg
from agent.images.build import Builder, BuildOptions
from agent.images.layers import OPAQUE_XATTR, Limits, apply_layer

pytestmark = pytest.mark.root

MTIME = 1_600_000_000
Entry = tuple[Any, ...]


def layer_tar(entries: list[Entry]) -> bytes:
    """("dir", name, mode, uid) ("file", name, data, mode, uid) ("sym", name, target)
    ("link", name, target) ("raw", TarInfo) -- mode and uid optional."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            data = None
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = rest[0] if rest else 0o755
                info.uid = info.gid = rest[1] if len(rest) > 1 else 0
            elif kind == "file":
                data = rest[0]
                info.size = len(data)
                info.mode = rest[1] if len(rest) > 1 else 0o644
                info.uid = info.gid = rest[2] if len(rest) > 2 else 0
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
                info.uid = info.gid = 4242
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            else:
                raise ValueError(kind)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


# --- the host and what must not change on it --------------------------------------------------------

@dataclass
class Host:
    base: Path     # tmp_path: everything here but the store must stay as it was
    store: Path    # where the entry point may write
    victim: Path   # a host file (0644, root, old times)
    vdir: Path     # a host directory holding q/ and victim2

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            if Path(dirpath) == self.base:
                dirnames[:] = [d for d in dirnames if (self.base / d) != self.store]
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = os.lstat(p)
                extra: Any = None
                if stat.S_ISREG(st.st_mode):
                    extra = hashlib.sha256(p.read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    extra = os.readlink(p)
                out[str(p.relative_to(self.base))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                                                      st.st_ctime_ns, st.st_size, extra)
        return out


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)


def make_host(tmp_path: Path) -> Host:
    """The victims under tmp_path/host and an empty tmp_path/store."""
    h = Host(tmp_path, tmp_path / "store", tmp_path / "host" / "victim", tmp_path / "host" / "vdir")
    h.vdir.mkdir(parents=True)
    (h.vdir / "q").mkdir()
    h.victim.write_text("victim\n")
    (h.vdir / "victim2").write_text("victim2\n")
    for p in (h.victim, h.vdir / "victim2", h.vdir / "q", h.vdir, h.victim.parent):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.utime(p, (MTIME, MTIME))
    h.store.mkdir()
    return h


# --- the cases ----------------------------------------------------------------------------------------

# Each: (id, layers, outcome) with V/D standing for the victim file and the victim directory,
# outcome "refused" (an InvalidArchive naming the problem) or a check of the result inside the root.
CASES: list[tuple[str, list[list[Entry]], str]] = [
    ("dir-then-symlink-to-host-file", [[("dir", "d", 0o6777, 4242), ("sym", "d", "V")]], "d-is-link"),
    ("symlinked-parent", [[("dir", "p"), ("dir", "p/q", 0o6777, 4242), ("sym", "p", "D")]], "ok"),
    ("deep-symlinked-grandparent", [[("dir", "a"), ("dir", "a/b"), ("dir", "a/b/q", 0o6777, 4242),
                                     ("sym", "a", "D/..")]], "ok"),
    ("symlink-replaced-by-itself-twice", [[("dir", "d", 0o6777, 4242), ("sym", "d", "V"),
                                           ("dir", "d", 0o6777, 4242), ("sym", "d", "D")]], "ok"),
    ("write-through-symlink", [[("sym", "p", "D"), ("file", "p/victim2", b"pwned", 0o6777, 4242)]], "refused"),
    ("mkdir-through-symlink", [[("sym", "p", "D"), ("dir", "p/q", 0o6777, 4242)]], "refused"),
    ("symlink-through-symlink", [[("sym", "p", "D"), ("sym", "p/new", "V")]], "refused"),
    ("relative-symlink-parent", [[("dir", "x"), ("sym", "x/up", "."), ("file", "x/up/f", b"x")]], "refused"),
    ("hardlink-absolute", [[("link", "h", "V")]], "refused"),
    ("hardlink-dotdot", [[("link", "h", "../../host/victim")]], "refused"),
    ("hardlink-through-symlink", [[("sym", "p", "D"), ("link", "h", "p/victim2")]], "refused"),
    ("hardlink-to-symlink", [[("sym", "s", "V"), ("link", "h", "s")]], "h-is-link"),
    ("hardlink-to-symlink-then-dir-attrs", [[("dir", "h", 0o6777, 4242), ("sym", "s", "V"),
                                             ("link", "h", "s")]], "h-is-link"),
    ("whiteout-through-symlink", [[("sym", "p", "D"), ("file", "p/.wh.victim2", b"")]], "refused"),
    ("opaque-through-symlink", [[("sym", "p", "D"), ("file", "p/.wh..wh..opq", b"")]], "refused"),
    ("opaque-dir-replaced-by-symlink", [[("dir", "o", 0o6777, 4242), ("file", "o/.wh..wh..opq", b""),
                                         ("sym", "o", "D")]], "ok"),
    ("whiteout-then-dir-then-symlink", [[("file", ".wh.w", b""), ("dir", "w", 0o6777, 4242),
                                         ("sym", "w", "V")]], "ok"),
    ("links-replaced-between-layers", [[("dir", "d", 0o6777, 4242), ("dir", "d/q", 0o6777, 4242)],
                                       [("sym", "d", "D")], [("dir", "d/q", 0o6777, 4242)]], "ok"),
    ("symlink-in-lower-then-write-under-it", [[("sym", "etc", "D")], [("file", "etc/victim2", b"pwned")]], "ok"),
    ("dir-replaced-by-file-gets-its-own-attrs", [[("dir", "d", 0o6777, 4242), ("file", "d", b"x", 0o644, 0)]],
     "d-is-file-0644"),
    ("dotdot-name", [[("file", "../host/victim", b"pwned")]], "refused"),
    ("dotdot-inner", [[("dir", "a"), ("file", "a/../../host/victim", b"pwned")]], "refused"),
    ("absolute-name", [[("file", "/host/victim", b"pwned")]], "refused"),
    ("symlink-dotdot-escape", [[("sym", "up", "../../../host")]], "refused"),
]


def _layers(h: Host, layers: list[list[Entry]]) -> list[bytes]:
    def sub(e: Entry) -> Entry:
        kind, name, *rest = e
        if kind in ("sym", "link") and rest:
            target = rest[0].replace("V", str(h.victim), 1) if rest[0].startswith("V") else rest[0]
            target = target.replace("D", str(h.vdir), 1) if target.startswith("D") else target
            return (kind, name, target)
        return e

    return [layer_tar([sub(e) for e in layer]) for layer in layers]


def _check_inside(root: Path, outcome: str) -> None:
    if outcome == "d-is-link":
        assert (root / "d").is_symlink()
    elif outcome == "h-is-link":
        st = os.lstat(root / "h")
        assert stat.S_ISLNK(st.st_mode)
    elif outcome == "d-is-file-0644":
        st = os.lstat(root / "d")
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0


# --- the entry points ---------------------------------------------------------------------------------
# Each applies the layers and returns the directory of the top layer (to look inside), or raises.

def via_snapshotter(h: Host, tars: list[bytes]) -> Path:
    store = ImageStore(h.store / "images")
    parent = ""
    for data in tars:
        parent, _ = store.snapshotter.apply(parent, io.BytesIO(data))
    return store.snapshotter.layer_dirs(parent)[0]


def via_apply_fallback(h: Host, tars: list[bytes]) -> Path:
    """The O_NOFOLLOW walk used where openat2 is missing."""
    safefs.use_openat2(False)
    try:
        return via_snapshotter(h, tars)
    finally:
        safefs.use_openat2(None)


def via_import(h: Host, tars: list[bytes]) -> Path:
    if len(tars) != 1:
        pytest.skip("import makes one layer")
    store = ImageStore(h.store / "images")
    image = store.import_tar(io.BytesIO(gzip.compress(tars[0])), "evil:1")
    return store.snapshotter.layer_dirs(image.chain_id)[0]


def _docker_archive(tars: list[bytes]) -> bytes:
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cname = hashlib.sha256(config).hexdigest() + ".json"
    files = {cname: config}
    names = []
    for t, d in zip(tars, diff_ids, strict=True):
        names.append(f"{d[7:]}/layer.tar")
        files[names[-1]] = t
    files["manifest.json"] = json.dumps([{"Config": cname, "RepoTags": ["evil:1"], "Layers": names}]).encode()
    return _tar_of(files)


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def oci_blobs(tars: list[bytes]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """gzip'd layers, a config and a manifest as OCI blobs: (digest -> bytes, the manifest)."""
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> tuple[str, int]:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return d, len(data)

    layers = []
    for t in tars:
        d, n = add(gzip.compress(t, mtime=0))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    cd, cn = add(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
                "layers": layers}
    return blobs, manifest


def _oci_layout(tars: list[bytes]) -> bytes:
    blobs, manifest = oci_blobs(tars)
    mbytes = json.dumps(manifest).encode()
    md = "sha256:" + hashlib.sha256(mbytes).hexdigest()
    blobs[md] = mbytes
    index = {"schemaVersion": 2, "manifests": [{"mediaType": manifest["mediaType"], "digest": md,
                                                "size": len(mbytes),
                                                "annotations": {"io.containerd.image.name": "evil:1"}}]}
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": json.dumps(index).encode()}
    files.update({"blobs/sha256/" + d[7:]: b for d, b in blobs.items()})
    return _tar_of(files)


def via_load_docker(h: Host, tars: list[bytes]) -> Path:
    store = ImageStore(h.store / "images")
    [image] = image_archive.load(store, io.BytesIO(_docker_archive(tars)))
    return store.snapshotter.layer_dirs(image.chain_id)[0]


def via_load_oci(h: Host, tars: list[bytes]) -> Path:
    store = ImageStore(h.store / "images")
    [image] = image_archive.load(store, io.BytesIO(_oci_layout(tars)))
    return store.snapshotter.layer_dirs(image.chain_id)[0]


def via_build_add(h: Host, tars: list[bytes]) -> Path:
    store = ImageStore(h.store / "images")
    ctx = h.store / "context"
    ctx.mkdir()
    lines = ["FROM scratch"]
    for i, t in enumerate(tars):
        (ctx / f"l{i}.tar").write_bytes(t)
        lines.append(f"ADD l{i}.tar /")
    opts = BuildOptions(dockerfile="\n".join(lines) + "\n")

    async def run() -> str:
        image_id = ""
        async for ev in Builder(store).build(ctx, opts):
            image_id = ev.image_id or image_id
        return image_id

    image = store.get(asyncio.run(run()))
    return store.snapshotter.layer_dirs(image.chain_id)[0]


ENTRY_POINTS: dict[str, Callable[[Host, list[bytes]], Path]] = {
    "snapshotter": via_snapshotter,
    "snapshotter-no-openat2": via_apply_fallback,
    "import": via_import,
    "load-docker-archive": via_load_docker,
    "load-oci-layout": via_load_oci,
    "build-add": via_build_add,
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(("case", "layers", "outcome"), CASES, ids=[c[0] for c in CASES])
def test_hostile_layer_leaves_the_host_alone(host: Host, entry: str, case: str, layers: list[list[Entry]],
                                             outcome: str) -> None:
    before = host.snapshot()
    tars = _layers(host, layers)
    try:
        top = ENTRY_POINTS[entry](host, tars)
    except ImageError as e:
        assert outcome == "refused" or entry == "build-add", f"{case} refused unexpectedly: {e}"
        assert "Traceback" not in str(e)
    else:
        assert outcome != "refused", f"{case}: accepted, should be refused"
        if entry != "build-add":
            _check_inside(top, outcome)
    assert host.snapshot() == before


def test_the_attack_itself_on_apply_layer(host: Host, tmp_path: Path) -> None:
    """The issue's reproduction, on the function every entry point ends in: a directory of mode
    6777 owned by 4242, then a symlink of the same name to a host file; and the same through a
    symlinked parent. Before the fix the victim became setuid and world-writable."""
    for i, entries in enumerate([[("dir", "d", 0o6777, 4242), ("sym", "d", str(host.victim))],
                                 [("dir", "p"), ("dir", "p/q", 0o6777, 4242), ("sym", "p", str(host.vdir))]]):
        root = host.store / f"root{i}"
        root.mkdir()
        apply_layer(io.BytesIO(layer_tar(entries)), root)
    st = os.stat(host.victim)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o644, 0, MTIME)
    st = os.stat(host.vdir / "q")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o755, 0, MTIME)


def test_refusals_name_the_member_and_the_link(host: Host) -> None:
    with pytest.raises(InvalidArchive, match=r"member 'p/victim2' goes through symlink 'p'"):
        via_snapshotter(host, _layers(host, [[("sym", "p", "D"), ("file", "p/victim2", b"x")]]))
    with pytest.raises(InvalidArchive, match=r"hardlink 'h' -> .* goes through 'p'"):
        via_snapshotter(host, _layers(host, [[("sym", "p", "D"), ("link", "h", "p/victim2")]]))


def test_a_directory_keeps_the_attributes_of_its_last_entry(host: Host) -> None:
    top = via_snapshotter(host, [layer_tar([("dir", "d", 0o700, 7), ("file", "d/f", b"x"), ("dir", "d", 0o751, 9)])])
    st = os.lstat(top / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o751, 9)
    assert (top / "d" / "f").read_bytes() == b"x"


def test_opaque_and_whiteouts_still_work_through_the_safe_path(host: Host) -> None:
    top = via_snapshotter(host, [layer_tar([("dir", "o"), ("file", "o/.wh..wh..opq", b""),
                                            ("file", ".wh.gone", b""), ("file", "o/keep", b"k")])])
    assert os.getxattr(top / "o", OPAQUE_XATTR) == b"y"
    st = os.lstat(top / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# --- pull: a registry that lies ----------------------------------------------------------------------

class LyingRegistry:
    """A tiny registry on loopback: path -> (status, headers, body) where body is bytes or a function
    writing the body itself (to stream without end, or trickle). Counts the bytes it sent."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], Any]] = {}
        self.sent = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, headers, body = fake.routes.get(urllib.parse.urlsplit(self.path).path,
                                                        (404, {}, b'{"errors":[{"code":"NOT_FOUND"}]}'))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    fake.sent += len(body)
                    return
                self.end_headers()
                try:
                    body(self.wfile, fake)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def image(self, repo: str, tag: str, tars: list[bytes]) -> dict[str, Any]:
        blobs, manifest = oci_blobs(tars)
        for d, b in blobs.items():
            self.routes[f"/v2/{repo}/blobs/{d}"] = (200, {}, b)
        self.manifest(repo, tag, json.dumps(manifest).encode())
        return manifest

    def manifest(self, repo: str, tag: str, body: bytes) -> None:
        self.routes[f"/v2/{repo}/manifests/{tag}"] = (
            200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def registry() -> Iterator[LyingRegistry]:
    r = LyingRegistry()
    try:
        yield r
    finally:
        r.close()


def via_pull(h: Host, tars: list[bytes]) -> Path:
    r = LyingRegistry()
    try:
        r.image("evil", "1", tars)
        store = ImageStore(h.store / "images")
        image = store.get(reg.pull(store, f"{r.host}/evil:1"))
    finally:
        r.close()
    return store.snapshotter.layer_dirs(image.chain_id)[0]


ENTRY_POINTS["pull"] = via_pull


def _endless(out: Any, fake: LyingRegistry) -> None:
    chunk = b"\0" * (1 << 20)
    while fake.sent < 4 << 30:  # 4 GiB: far more than anything may read
        out.write(chunk)
        fake.sent += len(chunk)


@pytest.mark.slow  # waits on a deadline / a socket close by design
def test_a_blob_longer_than_declared_is_cut_without_reading_the_rest(host: Host, registry: LyingRegistry) -> None:
    manifest = registry.image("evil", "1", [layer_tar([("file", "f", b"x")])])
    layer = manifest["layers"][0]
    # Same digest and declared size, but the body is endless (no Content-Length: read to the close).
    registry.routes[f"/v2/evil/blobs/{layer['digest']}"] = (200, {"Connection": "close"}, _endless)
    store = ImageStore(host.store / "images")
    before = time.monotonic()
    with pytest.raises(InvalidArchive, match=r"longer than its declared size"):
        reg.pull(store, f"{registry.host}/evil:1")
    assert time.monotonic() - before < 10
    # What the server managed to push before the close: socket buffers, not gigabytes.
    assert registry.sent < 256 << 20, registry.sent
    assert store.snapshotter.list() == [] and list(store.content.list()) == []


@pytest.mark.slow  # waits on a deadline / a socket close by design
def test_a_trickling_blob_runs_into_the_download_deadline(host: Host, registry: LyingRegistry) -> None:
    manifest = registry.image("evil", "1", [layer_tar([("file", "f", b"x")])])
    layer = manifest["layers"][0]

    def trickle(out: Any, fake: LyingRegistry) -> None:
        for _ in range(layer["size"]):
            out.write(b"\0")
            out.flush()
            time.sleep(0.2)

    registry.routes[f"/v2/evil/blobs/{layer['digest']}"] = (
        200, {"Content-Length": str(layer["size"])}, trickle)
    store = ImageStore(host.store / "images")
    client = reg.Client(registry.host, timeout=1.0)
    before = time.monotonic()
    with pytest.raises(reg.RegistryUnavailable, match=r"did not finish within 1 s"):
        reg.pull(store, f"{registry.host}/evil:1", client=client)
    client.close()
    assert time.monotonic() - before < 5
    assert store.snapshotter.list() == []


@pytest.mark.slow  # waits on the deadline by design
def test_a_trickling_manifest_runs_into_the_deadline(host: Host, registry: LyingRegistry) -> None:
    body = json.dumps(oci_blobs([layer_tar([("file", "f", b"x")])])[1]).encode()

    def trickle(out: Any, fake: LyingRegistry) -> None:
        for b in body:
            out.write(bytes([b]))
            out.flush()
            time.sleep(0.2)

    registry.routes["/v2/evil/manifests/slow"] = (
        200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Content-Length": str(len(body))},
        trickle)
    client = reg.Client(registry.host, timeout=1.0)
    before = time.monotonic()
    with pytest.raises(reg.RegistryUnavailable, match=r"manifest evil:slow: download did not finish within"):
        reg.pull(ImageStore(host.store / "images"), f"{registry.host}/evil:slow", client=client)
    client.close()
    assert time.monotonic() - before < 5


# --- compression bombs --------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["import", "load-docker-archive", "load-oci-layout", "pull"])
def test_a_compression_bomb_stops_at_the_layer_bound(host: Host, entry: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """16 MiB of zeros (a few KB gzip'd, as import, the OCI layout and the registry carry it) against
    a bound of 1 MiB: refused while streaming, naming the layer, with nothing big left on disk."""
    limits = Limits(layer=1 << 20)
    real_init = ImageStore.__init__

    def init(self: ImageStore, root: Path) -> None:
        real_init(self, root)
        self.limits = limits

    monkeypatch.setattr(ImageStore, "__init__", init)
    tars = [layer_tar([("file", "zeros", bytes(16 << 20))])]
    with pytest.raises(InvalidArchive, match=r"(import|layer .*): expands to more than 1048576 bytes, "
                                             r"the agent's maximum for a layer \(--max-layer-size 1048576\); refused"):
        ENTRY_POINTS[entry](host, tars)
    store = ImageStore(host.store / "images")
    assert store.snapshotter.list() == []
    leftovers = [p for p in (host.store / "images").rglob("*") if p.is_file() and p.stat().st_size > 1 << 20]
    assert leftovers == []


def test_the_image_bound_counts_every_layer_and_names_it(host: Host) -> None:
    store = ImageStore(host.store / "images")
    store.limits = Limits(image=3 << 20)
    one = layer_tar([("file", "a", bytes(2 << 20))])
    two = layer_tar([("file", "b", bytes(2 << 20))])
    with pytest.raises(InvalidArchive, match=r"layer .*: expands to more than \d+ bytes, the agent's maximum "
                                             r"for an image \(--max-image-size 3145728; \d+ bytes in the layers"):
        image_archive.load(store, io.BytesIO(_oci_layout([one, two])))
    assert store.snapshotter.list() == []
    # Within the bound, it loads.
    store.limits = Limits(layer=3 << 20, image=5 << 20)
    image_archive.load(store, io.BytesIO(_oci_layout([one, two])))


def test_load_writes_each_layer_once(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk of load: each layer is unpacked as the archive streams past (nothing of it in the
    store's tmp), and no layer blob is kept beside the unpacked layer: the store holds the image
    once (its files, a tar-split of a few hundred bytes, the config and manifest)."""
    from agent.images.snapshotter import Snapshotter

    tars = [layer_tar([("file", f"f{i}", os.urandom(1 << 20))]) for i in range(3)]
    store = ImageStore(host.store / "images")
    seen: list[int] = []
    real = Snapshotter.unpack

    def spy(self: Snapshotter, *args: Any, **kw: Any) -> Any:
        seen.append(sum(p.stat().st_size for p in store.tmp.rglob("*") if p.is_file()))
        return real(self, *args, **kw)

    monkeypatch.setattr(Snapshotter, "unpack", spy)
    for maker in (_docker_archive, _oci_layout):
        seen.clear()
        image_archive.load(store, io.BytesIO(maker(tars)))
        assert len(seen) == 3
        assert max(seen) < 64 << 10, seen  # no layer went through a temporary file
        assert store.content.total_size() < 64 << 10  # no layer blob kept
        on_disk = sum(p.stat().st_size for p in (host.store / "images").rglob("*")
                      if p.is_file() and not p.is_symlink())
        assert (3 << 20) <= on_disk < (3 << 20) + (128 << 10), on_disk
        assert list(store.tmp.iterdir()) == []
        for image in store.list():
            store.remove(image.id, force=True)


# --- deeply nested JSON -------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_json_is_a_clear_error_everywhere(host: Host, registry: LyingRegistry) -> None:
    store = ImageStore(host.store / "images")
    tars = [layer_tar([("file", "f", b"x")])]
    # docker-archive manifest.json
    with pytest.raises(InvalidArchive, match=r"manifest.json.*nested deeper than 64 levels"):
        image_archive.load(store, io.BytesIO(_tar_of({"manifest.json": DEEP})))
    # OCI index.json
    with pytest.raises(InvalidArchive, match=r"index.json.*nested deeper than 64 levels"):
        image_archive.load(store, io.BytesIO(_tar_of({"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
                                                      "index.json": b'{"manifests": ' + DEEP + b"}"})))
    # an image config, 100 levels of objects (valid for the C parser, deeper than the bound)
    cfg = b'{"a":' * 100 + b"1" + b"}" * 100
    name = hashlib.sha256(cfg).hexdigest() + ".json"
    with pytest.raises(InvalidArchive, match=r"config .*nested deeper than 64 levels"):
        image_archive.load(store, io.BytesIO(_tar_of({name: cfg, "layer.tar": tars[0], "manifest.json": json.dumps(
            [{"Config": name, "Layers": ["layer.tar"]}]).encode()})))
    # a registry manifest
    registry.manifest("evil", "deep", b'{"layers": ' + DEEP + b"}")
    with pytest.raises(InvalidArchive, match=r"manifest evil:deep.*nested deeper than 64 levels"):
        reg.pull(store, f"{registry.host}/evil:deep")
    assert store.snapshotter.list() == []
