"""Pull and push against a real registry: Debian's docker-registry (distribution 2.8.2), started
here on a free 127.0.0.1 port with a temp storage dir, with htpasswd (basic) or token (bearer) auth,
stopped by PID. Hostile answers come from a fake registry (a handler in this process), since the
real one never lies about digests.

``Registry`` is also used by tests/bench/bench_images.py. The token mode comes with a tiny token server (a thread in the test process) that the registry
trusts: it signs RS256 JWTs with a self-signed certificate given to the registry as its
rootcertbundle, after checking basic credentials, granting what each scope asks.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

REGISTRY = "/usr/bin/docker-registry"
SERVICE = "dockyard-test-registry"
ISSUER = "dockyard-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def htpasswd_line(user: str, password: str) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, users: dict[str, str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockyard test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = ""
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(user) != pw:
                        self.send_response(401)
                        self.end_headers()
                        return
                server.requests.append({"user": user, "scope": q.get("scope", []), "service": q.get("service")})
                token = server.token(user, q.get("scope", []))
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def token(self, user: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            # Anonymous users may pull only; known users get what they ask for.
            granted = [a for a in actions.split(",") if a and (user or a == "pull")]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Registry:
    def __init__(self, base: Path, auth: str = "", users: dict[str, str] | None = None) -> None:
        self.base = base
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.users = users or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.token_server: TokenServer | None = None
        self.log = base / "registry.log"
        storage = base / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if auth == "basic":
            (base / "htpasswd").write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            lines += ["auth:", "  htpasswd:", "    realm: dockyard-test", f"    path: {base / 'htpasswd'}"]
        elif auth == "token":
            self.token_server = TokenServer(self.users)
            (base / "token.pem").write_bytes(self.token_server.cert_pem)
            lines += ["auth:", "  token:", f"    realm: http://127.0.0.1:{self.token_server.port}/token",
                      f"    service: {SERVICE}", f"    issuer: {ISSUER}", f"    rootcertbundle: {base / 'token.pem'}"]
        (base / "config.yml").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if not os.access(REGISTRY, os.X_OK):
            pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
        if self.token_server is not None:
            self.token_server.start()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([REGISTRY, "serve", str(self.base / "config.yml")], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not listen: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.token_server is not None:
            self.token_server.stop()
        shutil.rmtree(self.base / "storage", ignore_errors=True)


# --- tests ---------------------------------------------------------------------------------------------

import gzip  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import tarfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import zstandard  # noqa: E402

from agent.images import ImageStore, InvalidArchive  # noqa: E402
from agent.images import registry as reg  # noqa: E402
from agent.images.config import host_architecture  # noqa: E402
from tests.agent_harness import AgentProcess  # noqa: E402

pytestmark = [pytest.mark.peer, pytest.mark.root]
USERS = {"alice": "s3cret-pw"}


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(tmp_path / "registry", "basic", USERS)
    try:
        r.start()
        yield r
    finally:
        r.stop()


@pytest.fixture
def open_registry(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(tmp_path / "open-registry")
    try:
        r.start()
        yield r
    finally:
        r.stop()


def _store_state(store: ImageStore) -> tuple[object, ...]:
    return (sorted(store.content.list()), sorted(p.name for p in (store.root / "ingest").iterdir()),
            sorted(s.key for s in store.snapshotter.list()), sorted(p.name for p in store.tmp.iterdir()),
            [i.id for i in store.list(all=True)])


def _with_layer(store: ImageStore, base: str, ref: str, files: dict[str, bytes]) -> str:
    """base + one more layer holding ``files`` (as a build step would make it)."""
    key = f"test-{secrets.token_hex(4)}"
    store.snapshotter.prepare(key, store.get(base).chain_id)
    try:
        upper = store.snapshotter.layer_dirs(key)[0]
        for name, data in files.items():
            (upper / name).parent.mkdir(parents=True, exist_ok=True)
            (upper / name).write_bytes(data)
        return store.commit(key, base, ref, created_by="test layer").id
    finally:
        store.snapshotter.remove(key)


def _collect() -> tuple[list[reg.Progress], reg.ProgressFn]:
    events: list[reg.Progress] = []
    return events, events.append


@pytest.mark.slow
def test_push_pull_basic_auth_skip_and_mount(tmp_path: Path, basic_registry: Registry, busybox_tar_path: Path) -> None:
    src = ImageStore(tmp_path / "src")
    with open(busybox_tar_path, "rb") as f:
        src.import_tar(f, "busybox:latest", ['CMD ["sh"]'])
    ref = f"{basic_registry.host}/team/app:1"
    image_id = _with_layer(src, "busybox:latest", ref, {"app/hello.txt": b"hello registry\n"})
    alice = reg.Auth("alice", USERS["alice"])

    with pytest.raises(reg.Unauthorized):
        reg.push(src, ref, reg.Auth("alice", "wrong"))
    with pytest.raises(reg.Unauthorized):
        reg.push(src, ref)

    events, emit = _collect()
    digest = reg.push(src, ref, alice, emit)
    assert [e.status for e in events].count("Pushed") == 3  # two layers and the config
    assert any(f"digest: {digest}" in e.status for e in events)
    assert f"{basic_registry.host}/team/app@{digest}" in src.get(ref).repo_digests

    events, emit = _collect()
    assert reg.push(src, ref, alice, emit) == digest
    statuses = [e.status for e in events if e.id]
    assert statuses.count("Layer already exists") == 3 and "Pushed" not in statuses

    other = f"{basic_registry.host}/team/other:1"
    src.tag(ref, other)
    events, emit = _collect()
    reg.push(src, other, alice, emit)
    assert [e.status for e in events].count("Mounted from team/app") == 3, [e.status for e in events]

    dst = ImageStore(tmp_path / "dst")
    with pytest.raises(reg.Unauthorized):
        reg.pull(dst, ref)
    events, emit = _collect()
    assert reg.pull(dst, ref, alice, emit) == image_id
    assert [e.status for e in events].count("Pull complete") == 2
    got = dst.get(ref)
    assert got.diff_ids == src.get(ref).diff_ids
    assert (dst.snapshotter.layer_dirs(got.chain_id)[0] / "app" / "hello.txt").read_bytes() == b"hello registry\n"
    assert f"{basic_registry.host}/team/app@{digest}" in got.repo_digests
    events, emit = _collect()
    reg.pull(dst, f"{basic_registry.host}/team/app@{digest}", alice, emit)
    assert [e.status for e in events if e.id] == ["Already exists", "Already exists"]


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload(cl: reg.Client, path: str, blob: bytes) -> dict[str, object]:
    loc = cl.start_upload(path)
    cl.upload(path, loc, io.BytesIO(blob), _sha(blob), len(blob), lambda n: None, chunk_size=1000)
    return {"digest": _sha(blob), "size": len(blob)}


def test_pull_index_gzip_and_zstd_layers(tmp_path: Path, open_registry: Registry) -> None:
    """An image index with another platform first; layers gzip and zstd; uploaded in 1000-byte chunks."""
    cl = reg.Client(open_registry.host)
    l1 = _layer({"etc/one": b"one\n" * 500})
    l2 = _layer({"etc/two": b"two\n" * 500})
    gz = gzip.compress(l1)
    zs = zstandard.ZstdCompressor().compress(l2)
    config = json.dumps({"architecture": host_architecture(), "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [_sha(l1), _sha(l2)]}, "history": []}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_upload(cl, "multi", config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_upload(cl, "multi", gz)},
                   {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", **_upload(cl, "multi", zs)}],
    }).encode()
    mdigest = cl.put_manifest("multi", _sha(manifest), manifest, "application/vnd.oci.image.manifest.v1+json")
    other_arch = "arm64" if host_architecture() != "arm64" else "amd64"
    other = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_upload(cl, "multi", b"{}")},
                        "layers": []}).encode()
    odigest = cl.put_manifest("multi", _sha(other), other, "application/vnd.oci.image.manifest.v1+json")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": odigest, "size": len(other),
         "platform": {"os": "linux", "architecture": other_arch}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": len(manifest),
         "platform": {"os": "linux", "architecture": host_architecture()}},
    ]}).encode()
    cl.put_manifest("multi", "v1", index, "application/vnd.oci.image.index.v1+json")
    cl.close()

    store = ImageStore(tmp_path / "store")
    image_id = reg.pull(store, f"{open_registry.host}/multi:v1")
    assert image_id == _sha(config)
    image = store.get(f"{open_registry.host}/multi:v1")
    top = store.snapshotter.layer_dirs(image.chain_id)
    assert (top[0] / "etc" / "two").read_bytes() == b"two\n" * 500
    assert (top[1] / "etc" / "one").read_bytes() == b"one\n" * 500
    assert f"{open_registry.host}/multi@{mdigest}" in image.repo_digests


# --- a lying registry -----------------------------------------------------------------------------------

class FakeRegistry:
    """Answers from a dict path -> (status, headers, body); records the requests."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body_too: bool) -> None:
                status, headers, body = fake.routes.get(urllib.parse.urlsplit(self.path).path,
                                                        (404, {}, b'{"errors":[{"code":"NOT_FOUND"}]}'))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body_too:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def blob(self, path: str, digest: str, body: bytes) -> None:
        self.routes[f"/v2/{path}/blobs/{digest}"] = (200, {}, body)

    def manifest(self, path: str, ref: str, body: bytes, digest_header: str = "") -> None:
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if digest_header:
            headers["Docker-Content-Digest"] = digest_header
        self.routes[f"/v2/{path}/manifests/{ref}"] = (200, headers, body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    f = FakeRegistry()
    try:
        yield f
    finally:
        f.close()


def _image_parts(layers: list[bytes]) -> tuple[bytes, bytes]:
    config = json.dumps({"architecture": host_architecture(), "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [_sha(x) for x in layers]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _sha(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _sha(x),
                                       "size": len(x)} for x in layers]}).encode()
    return config, manifest


def test_hostile_registry_answers_leave_nothing(tmp_path: Path, fake_registry: FakeRegistry) -> None:
    store = ImageStore(tmp_path / "store")
    before = _store_state(store)
    good = _layer({"good": b"good\n"})
    bad = _layer({"bad": b"bad\n"})
    config, manifest = _image_parts([good, bad])
    fake_registry.manifest("evil", "1", manifest)
    fake_registry.blob("evil", _sha(config), config)
    fake_registry.blob("evil", _sha(good), good)
    # The second layer's blob is not what its digest says (same size, other bytes).
    fake_registry.blob("evil", _sha(bad), _layer({"bad": b"BAD\n"}))
    with pytest.raises(InvalidArchive, match="digest mismatch"):
        reg.pull(store, f"{fake_registry.host}/evil:1")
    assert _store_state(store) == before  # the config and the good layer that came first are gone too

    # A manifest asked for by digest whose content is another.
    with pytest.raises(InvalidArchive, match="digest mismatch"):
        fake_registry.manifest("evil", _sha(b"x" * 10), manifest)
        reg.pull(store, f"{fake_registry.host}/evil@{_sha(b'x' * 10)}")
    # A Docker-Content-Digest header that disagrees with the body.
    fake_registry.manifest("evil", "2", manifest, digest_header=_sha(b"other"))
    with pytest.raises(InvalidArchive, match="Docker-Content-Digest"):
        reg.pull(store, f"{fake_registry.host}/evil:2")
    # A manifest naming a blob the registry does not have.
    _, manifest3 = _image_parts([good, _layer({"missing": b"m\n"})])
    fake_registry.manifest("evil", "3", manifest3)
    with pytest.raises(reg.RegistryError, match="404"):
        reg.pull(store, f"{fake_registry.host}/evil:3")
    # A layer whose content does not match its diff_id (the config lies).
    config4 = json.dumps({"architecture": host_architecture(), "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": [_sha(b"not the layer")]}}).encode()
    manifest4 = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "config": {"digest": _sha(config4), "size": len(config4)},
                            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                        "digest": _sha(good), "size": len(good)}]}).encode()
    fake_registry.manifest("evil", "4", manifest4)
    fake_registry.blob("evil", _sha(config4), config4)
    with pytest.raises(InvalidArchive, match="diff_id mismatch"):
        reg.pull(store, f"{fake_registry.host}/evil:4")
    assert _store_state(store) == before


def test_bearer_token_auth_against_the_real_registry(tmp_path: Path, busybox_tar_path: Path) -> None:
    """distribution's token auth, trusting a token server of this test (RS256, x5c, rootcertbundle)."""
    registry = Registry(tmp_path / "token-registry", "token", USERS)
    try:
        registry.start()
        store = ImageStore(tmp_path / "store")
        with open(busybox_tar_path, "rb") as f:
            store.import_tar(f, f"{registry.host}/lib/busybox:1")
        ref = f"{registry.host}/lib/busybox:1"
        with pytest.raises(reg.Unauthorized):
            reg.push(store, ref)  # anonymous tokens grant pull only
        digest = reg.push(store, ref, reg.Auth("alice", USERS["alice"]))
        assert registry.token_server is not None
        scopes = [s for r in registry.token_server.requests for s in r["scope"]]
        assert "repository:lib/busybox:pull,push" in scopes
        other = ImageStore(tmp_path / "other")
        reg.pull(other, f"{registry.host}/lib/busybox@{digest}")  # anonymous pull with a pull-only token
        assert other.get(f"{registry.host}/lib/busybox@{digest}").id == store.get(ref).id
        assert reg.login(registry.host, reg.Auth("alice", USERS["alice"])) == "Login Succeeded"
        with pytest.raises(reg.Unauthorized):
            reg.login(registry.host, reg.Auth("alice", "nope"))
    finally:
        registry.stop()


@pytest.mark.slow
def test_cli_login_push_pull_round_trip(clean_agent: AgentProcess, tmp_path: Path, basic_registry: Registry,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    a = clean_agent
    monkeypatch.setenv("DOCKYARD_CONFIG", str(tmp_path / "dockyard-config"))
    ref = f"{basic_registry.host}/cli/busybox:1"
    a.cli("tag", "busybox", ref, check=True)
    r = a.cli("push", ref)
    assert r.returncode != 0 and "unauthorized" in r.stderr.lower()
    r = a.cli("login", "-u", "alice", "--password-stdin", basic_registry.host, input=USERS["alice"] + "\n")
    assert r.returncode == 0 and "Login Succeeded" in r.stdout, r.stderr
    saved = json.loads((tmp_path / "dockyard-config" / "config.json").read_text())
    assert base64.b64decode(saved["auths"][basic_registry.host]["auth"]).decode() == f"alice:{USERS['alice']}"
    assert (tmp_path / "dockyard-config" / "config.json").stat().st_mode & 0o777 == 0o600
    r = a.cli("push", ref, check=True)
    assert "Pushed" in r.stdout and "digest: sha256:" in r.stdout
    r = a.cli("push", ref, check=True)
    assert "Layer already exists" in r.stdout and "Pushed" not in r.stdout
    a.cli("rmi", ref, check=True)
    r = a.cli("pull", ref, check=True)
    assert "Already exists" in r.stdout  # busybox's layer is still here
    assert a.cli("run", "--rm", ref, "echo", "pulled").stdout == "pulled\n"
    a.cli("rmi", ref, check=True)
    r = a.cli("logout", basic_registry.host, check=True)
    r = a.cli("pull", ref)
    assert r.returncode != 0 and "unauthorized" in r.stderr.lower()
