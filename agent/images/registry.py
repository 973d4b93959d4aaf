"""Registry client: pull and push over the OCI distribution API (what docker-registry, Docker Hub,
GHCR and Harbor speak), into and out of the image store.

Authentication, as docker does it: a request answered 401 carries ``WWW-Authenticate``;
``Basic`` -> the credentials on every request; ``Bearer realm=..,service=..,scope=..`` -> a token
from the realm (GET with basic credentials, or POST grant_type=refresh_token with an identity token,
anonymous when there are none), cached per scope, then the request again with it.
Plain HTTP is used only for loopback registries and those named insecure (https is tried first, an
insecure one's certificate unchecked), as docker treats them. A docker.io name is pulled from the
registry mirrors first, in order, and from Docker Hub only when none of them has it
(registryconfig.py; no credentials are sent to a mirror).

Pull: manifest (an index -> the manifest for linux/<host arch>), every digest checked: the manifest
against the digest asked for and Docker-Content-Digest, the config through the content store's
verified writer. Layers already unpacked are skipped ("Already exists"); the others stream from the
socket into the snapshotter's unpack (gzip, zstd, plain), hashed on the way, up to three at once,
and become snapshots, in order, only when size, digest and diff_id all match. No layer blob is
kept: the layer's tar-split makes it again for push and save. A failed pull removes what it added.

Push: for each blob, HEAD (the registry has it: "Layer already exists"), else a cross-repository
mount from a repository of the same registry the image came from or went to, else a chunked upload
(POST, PATCH with Content-Range per chunk, PUT ?digest=). Then the manifest, and the registry's
digest for it is recorded as a repo digest. Blobs are pushed as they are stored (built and imported
layers are uncompressed OCI layers; pulled ones keep their compression).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import ipaddress
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.errors import Unavailable
from common.registries import DOCKER_HUB, DOCKER_INDEX_SERVER, config_key

from . import reference as refs
from .config import (
    LAYER_MEDIA_TYPES,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    chain_ids,
    host_architecture,
    load_json,
)
from .errors import ImageError, ImageNotFound, InvalidArchive
from .hashing import StreamHash
from .imagestore import ImageStore, LocalLayer
from .layers import Bound, LayerStats
from .store import check_digest, sha256_bytes

log = logging.getLogger("dockyard.images")

MANIFEST_ACCEPT = ", ".join([MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST])
MAX_MANIFEST = 4 << 20
CHUNK_SIZE = 8 << 20            # upload chunk (PATCH) size
READ = 1 << 20
DRAIN_MAX = 64 << 10            # a response body left unread up to this is read to keep its connection,
DRAIN_SECONDS = 0.5             # if it comes within this
MIN_RATE = 64 << 10             # bytes/s: a blob download may take timeout + size / MIN_RATE at most


class RegistryError(ImageError):
    """The registry refused, failed or answered something that is not the distribution API."""


class Unauthorized(RegistryError):
    pass


class RegistryUnavailable(RegistryError, Unavailable):
    pass


@dataclass
class Auth:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""


@dataclass
class Progress:
    id: str
    status: str
    current: int = 0
    total: int = 0
    image_id: str = ""
    digest: str = ""
    reference: str = ""


ProgressFn = Callable[[Progress], None]


def registry_host(domain: str) -> str:
    """The host to talk to for a reference's domain (docker.io -> registry-1.docker.io)."""
    return DOCKER_HUB if domain == refs.DEFAULT_DOMAIN else domain


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else host[1:host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq == -1:
            break
        key = rest[i:eq].strip().strip(",").strip().lower()
        j = eq + 1
        if j < len(rest) and rest[j] == '"':
            end = rest.find('"', j + 1)
            end = len(rest) if end == -1 else end
            params[key] = rest[j + 1:end]
            i = end + 1
        else:
            end = rest.find(",", j)
            end = len(rest) if end == -1 else end
            params[key] = rest[j:end].strip()
            i = end
        while i < len(rest) and rest[i] in ", ":
            i += 1
    return scheme.lower(), params


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    resp: http.client.HTTPResponse
    conn: http.client.HTTPConnection

    def read(self, n: int = -1) -> bytes:
        return self.resp.read(n) if n >= 0 else self.resp.read()

    def close(self) -> None:
        """Done with the response. What is left of a short body is read so the connection can be
        reused; anything longer (or of unknown length) is never read: the connection is closed
        instead, since a registry that lies about a blob's size may stream without end."""
        left = self.resp.length
        if not self.resp.isclosed() and left is not None and left <= DRAIN_MAX:
            deadline = time.monotonic() + DRAIN_SECONDS  # and a body that trickles in is not waited for
            sock = self.conn.sock
            with contextlib.suppress(Exception):
                while not self.resp.isclosed() and (wait := deadline - time.monotonic()) > 0:
                    if sock is not None:
                        sock.settimeout(wait)
                    if not self.resp.read1(DRAIN_MAX):
                        break
            if sock is not None and self.resp.isclosed():
                with contextlib.suppress(OSError):
                    sock.settimeout(self.conn.timeout)
        if not self.resp.isclosed():
            self.resp.close()
            self.conn.close()  # the next request on it opens a new one (http.client's auto_open)
        self.resp.close()


@dataclass
class Client:
    """One registry host. Not thread-safe; one per pull or push."""

    host: str
    auth: Auth = field(default_factory=Auth)
    timeout: float = 60.0
    scheme: str = ""
    insecure: bool = False      # an insecure registry: https unverified, else plain http
    _tokens: dict[str, str] = field(default_factory=dict)
    _basic: bool = False
    _conns: dict[tuple[str, str], http.client.HTTPConnection] = field(default_factory=dict)

    # --- transport -----------------------------------------------------------------------------------

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        conn = self._conns.get(key)
        if conn is None:
            if scheme == "https":
                ctx = ssl._create_unverified_context() if self.insecure else ssl.create_default_context()
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            self._conns[key] = conn
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def fork(self) -> Client:
        """Another client of the same registry with the tokens got so far and its own connections
        (one per parallel download)."""
        return Client(self.host, self.auth, self.timeout, self.scheme, self.insecure, dict(self._tokens), self._basic)

    def _scheme(self) -> str:
        if self.scheme:
            return self.scheme
        if not _is_loopback(self.host) and not self.insecure:
            self.scheme = "https"
            return self.scheme
        # Loopback registries may be plain HTTP (docker's default insecure registries), as may those
        # named insecure.
        try:
            conn = http.client.HTTPSConnection(self.host, timeout=5, context=ssl._create_unverified_context())
            conn.request("GET", "/v2/")
            conn.getresponse().read(DRAIN_MAX)  # only whether TLS answers matters, never the whole body
            conn.close()
            self.scheme = "https"
        except (ssl.SSLError, ConnectionError, OSError, http.client.HTTPException):
            self.scheme = "http"
        return self.scheme

    def _send(self, method: str, url: str, headers: dict[str, str], body: Any) -> _Response:
        parsed = urllib.parse.urlsplit(url)
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        for attempt in range(2):
            conn = self._conn(parsed.scheme, parsed.netloc)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError) as e:
                conn.close()
                self._conns.pop((parsed.scheme, parsed.netloc), None)
                if attempt == 0 and (body is None or isinstance(body, bytes)):
                    continue
                raise RegistryUnavailable(f"{method} {url}: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._conns.pop((parsed.scheme, parsed.netloc), None)
                raise RegistryUnavailable(f"{method} {url}: {e}") from None
            return _Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp, conn)
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None,
                scope: str = "", ok: Sequence[int] = (200,)) -> _Response:
        """A request to the registry with authentication and redirects handled; raises unless the
        status is one of ``ok``."""
        url = path if "://" in path else f"{self._scheme()}://{self.host}{path}"
        hdrs = dict(headers or {})
        for _ in range(5):
            send = dict(hdrs)
            same_host = urllib.parse.urlsplit(url).netloc == self.host
            if same_host:
                send.update(self._auth_header(scope))
            resp = self._send(method, url, send, body)
            if resp.status == 401 and same_host and "www-authenticate" in resp.headers:
                resp.close()
                if not self._authenticate(resp.headers["www-authenticate"], scope):
                    raise Unauthorized(f"{self.host}: unauthorized: authentication required")
                resp = self._send(method, url, {**hdrs, **self._auth_header(scope)}, body)
            if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                resp.close()
                url = urllib.parse.urljoin(url, resp.headers["location"])
                if resp.status == 303:
                    method, body = "GET", None
                continue
            if resp.status not in ok:
                text = resp.read(64 << 10).decode(errors="replace")
                resp.close()
                raise _status_error(resp.status, method, path, text, self.host)
            return resp
        raise RegistryError(f"{method} {path}: too many redirects")

    def _auth_header(self, scope: str) -> dict[str, str]:
        if self.auth.registry_token:
            return {"Authorization": f"Bearer {self.auth.registry_token}"}
        token = self._tokens.get(scope) or self._tokens.get("*")
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self._basic and self.auth.username:
            cred = base64.b64encode(f"{self.auth.username}:{self.auth.password}".encode()).decode()
            return {"Authorization": f"Basic {cred}"}
        return {}

    def _authenticate(self, challenge: str, scope: str) -> bool:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if not self.auth.username or self._basic:
                return False
            self._basic = True
            return True
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"{self.host}: unsupported authentication challenge {challenge!r}")
        scopes = [s for s in {scope, params.get("scope", "")} if s]
        token = self._fetch_token(params["realm"], params.get("service", ""), scopes)
        if not token or self._tokens.get(scope or "*") == token:
            return False
        self._tokens[scope or "*"] = token
        return True

    def _fetch_token(self, realm: str, service: str, scopes: Sequence[str]) -> str:
        query = [("service", service)] if service else []
        query += [("scope", s) for s in scopes]
        headers: dict[str, str] = {}
        if self.auth.identity_token:
            form = urllib.parse.urlencode([("grant_type", "refresh_token"), ("refresh_token", self.auth.identity_token),
                                           ("client_id", "dockyard"), *query]).encode()
            resp = self._send("POST", realm, {"Content-Type": "application/x-www-form-urlencoded"}, form)
        else:
            if self.auth.username:
                cred = base64.b64encode(f"{self.auth.username}:{self.auth.password}".encode()).decode()
                headers["Authorization"] = f"Basic {cred}"
            sep = "&" if "?" in realm else "?"
            resp = self._send("GET", realm + (sep + urllib.parse.urlencode(query) if query else ""), headers, None)
        data = resp.read(1 << 20)
        resp.close()
        if resp.status in (401, 403):
            raise Unauthorized(f"{self.host}: unauthorized: the token server {realm} refused the credentials")
        if resp.status != 200:
            raise RegistryError(f"{self.host}: token server {realm} answered {resp.status}")
        try:
            doc = load_json(data, f"{self.host}: token server {realm}")
            token = doc.get("token") or doc.get("access_token") or ""
        except (InvalidArchive, AttributeError):
            raise RegistryError(f"{self.host}: token server {realm} did not answer JSON") from None
        if not isinstance(token, str):
            raise RegistryError(f"{self.host}: token server {realm}: token is not a string")
        return token

    def ping(self) -> None:
        """GET /v2/ with authentication (what login checks)."""
        resp = self.request("GET", "/v2/", scope="")
        resp.close()

    # --- manifests and blobs --------------------------------------------------------------------------

    def get_manifest(self, path: str, ref: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest, the digest checked."""
        resp = self.request("GET", f"/v2/{path}/manifests/{ref}", {"Accept": MANIFEST_ACCEPT},
                            scope=f"repository:{path}:pull")
        length = int(resp.headers.get("content-length", "0") or 0)
        if length > MAX_MANIFEST:
            resp.close()
            raise InvalidArchive(f"manifest {path}:{ref} is larger than {MAX_MANIFEST} bytes")
        # Read as it arrives, under the download deadline: a manifest that trickles is cut too.
        reader = _Counting(resp.resp, lambda n: None, f"manifest {path}:{ref}", length or MAX_MANIFEST, self.timeout)
        parts: list[bytes] = []
        got = 0
        while got <= MAX_MANIFEST and (chunk := reader.read(MAX_MANIFEST + 1 - got)):
            parts.append(chunk)
            got += len(chunk)
        body = b"".join(parts)
        resp.close()
        if len(body) > MAX_MANIFEST:
            raise InvalidArchive(f"manifest {path}:{ref} is larger than {MAX_MANIFEST} bytes")
        digest = sha256_bytes(body)
        if ref.startswith("sha256:") and digest != ref:
            raise InvalidArchive(f"manifest {path}@{ref}: digest mismatch: the registry sent content of {digest}")
        header = resp.headers.get("docker-content-digest", "")
        if header and header.startswith("sha256:") and header != digest:
            raise InvalidArchive(f"manifest {path}:{ref}: Docker-Content-Digest {header} does not match its content ({digest})")
        doc = load_json(body, f"manifest {path}:{ref}")
        if not isinstance(doc, dict):
            raise InvalidArchive(f"manifest {path}:{ref}: must be a JSON object")
        media = resp.headers.get("content-type", "").split(";")[0].strip()
        media = doc.get("mediaType") or media
        return body, str(media), digest

    def open_blob(self, path: str, digest: str) -> _Response:
        return self.request("GET", f"/v2/{path}/blobs/{digest}", scope=f"repository:{path}:pull")

    def has_blob(self, path: str, digest: str, scope: str) -> bool:
        resp = self.request("HEAD", f"/v2/{path}/blobs/{digest}", scope=scope, ok=(200, 404))
        resp.close()
        return resp.status == 200

    def mount_blob(self, path: str, digest: str, source: str) -> str | None:
        """Cross-repository mount; returns None when mounted, else the upload URL it started."""
        scope = f"repository:{path}:pull,push"
        resp = self.request("POST", f"/v2/{path}/blobs/uploads/?mount={digest}&from={source}",
                            {"Content-Length": "0"}, b"", scope=scope, ok=(201, 202))
        resp.close()
        if resp.status == 201:
            return None
        return self._location(resp)

    def start_upload(self, path: str) -> str:
        resp = self.request("POST", f"/v2/{path}/blobs/uploads/", {"Content-Length": "0"}, b"",
                            scope=f"repository:{path}:pull,push", ok=(202,))
        resp.close()
        return self._location(resp)

    def _location(self, resp: _Response) -> str:
        loc = resp.headers.get("location", "")
        if not loc:
            raise RegistryError(f"{self.host}: upload answered without a Location")
        return urllib.parse.urljoin(f"{self._scheme()}://{self.host}/", loc)

    def upload(self, path: str, location: str, src: IO[bytes], digest: str, size: int,
               progress: Callable[[int], None], chunk_size: int = CHUNK_SIZE) -> None:
        """Chunked upload: PATCH each chunk with its Content-Range, then PUT ?digest= to close it."""
        scope = f"repository:{path}:pull,push"
        offset = 0
        while offset < size or size == 0:
            data = src.read(min(chunk_size, size - offset)) if size else b""
            if not data and size:
                raise InvalidArchive(f"blob {digest}: the store's copy is shorter than {size} bytes")
            if not data:
                break
            resp = self.request("PATCH", location, {
                "Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                "Content-Range": f"{offset}-{offset + len(data) - 1}"}, data, scope=scope, ok=(202, 204))
            resp.close()
            location = self._location(resp)
            offset += len(data)
            progress(offset)
        if size and src.read(1):  # also where a layer made again from its snapshot checks its digest
            raise InvalidArchive(f"blob {digest}: the store's copy is longer than {size} bytes")
        sep = "&" if "?" in location else "?"
        resp = self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}",
                            {"Content-Length": "0"}, b"", scope=scope, ok=(201, 204))
        resp.close()

    def put_manifest(self, path: str, tag: str, body: bytes, media_type: str) -> str:
        resp = self.request("PUT", f"/v2/{path}/manifests/{tag}", {"Content-Type": media_type,
                            "Content-Length": str(len(body))}, body, scope=f"repository:{path}:pull,push", ok=(201, 200))
        resp.close()
        digest = sha256_bytes(body)
        header = resp.headers.get("docker-content-digest", "")
        if header and header != digest:
            raise RegistryError(f"{self.host}: the registry stored manifest {header}, we sent {digest}")
        return digest


def _status_error(status: int, method: str, path: str, text: str, host: str) -> RegistryError:
    detail = text.strip()
    try:
        errs = load_json(text, "error").get("errors") or []
        detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errs) or detail
    except (InvalidArchive, AttributeError, TypeError):
        pass
    msg = f"{host}: {method} {path}: {status} {detail[:500]}".rstrip()
    if status == 401:
        return Unauthorized(msg)
    if status == 403:
        return Unauthorized(f"{msg} (denied)")
    if status == 404:
        return _NotFound(msg)
    if status >= 500:
        return RegistryUnavailable(msg)
    return RegistryError(msg)


class _NotFound(RegistryError, ImageNotFound):
    pass


# --- pull -----------------------------------------------------------------------------------------------

def _choose_platform(index: dict[str, Any], what: str) -> dict[str, Any]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise InvalidArchive(f"{what}: the image index lists no manifests")
    arch = host_architecture()
    for m in manifests:
        if not isinstance(m, dict):
            continue
        plat = m.get("platform") or {}
        if plat.get("os") == "linux" and plat.get("architecture") == arch:
            return m
    found = sorted({f"{(m.get('platform') or {}).get('os')}/{(m.get('platform') or {}).get('architecture')}"
                    for m in manifests if isinstance(m, dict)})
    raise ImageNotFound(f"{what}: no manifest for linux/{arch} in the index (it has {', '.join(found)})")


def _descriptor(desc: Any, what: str) -> tuple[str, int, str]:
    if not isinstance(desc, dict):
        raise InvalidArchive(f"{what}: descriptor must be an object")
    digest = check_digest(desc.get("digest"), f"{what}.digest")
    size = desc.get("size")
    if not isinstance(size, int) or size < 0:
        raise InvalidArchive(f"{what}.size: must be a non-negative integer")
    return digest, size, str(desc.get("mediaType", ""))


def _reporter(emit: ProgressFn, short: str, status: str, total: int) -> Callable[[int], None]:
    return lambda n: emit(Progress(short, status, n, total))


class _Counting:
    """A blob's body as it downloads: progress, an overall deadline (a registry that trickles a
    byte a minute never trips the socket's timeout), and transport errors as RegistryUnavailable."""

    def __init__(self, raw: Any, cb: Callable[[int], None], what: str = "blob", size: int = 0,
                 timeout: float = 60.0, abort: threading.Event | None = None) -> None:
        self.raw = raw
        self.abort = abort
        self.n = 0
        self.cb = cb
        self.last = 0.0
        self.what = what
        self.budget = timeout + size / MIN_RATE
        self.deadline = time.monotonic() + self.budget

    def read(self, n: int = -1) -> bytes:
        if self.abort is not None and self.abort.is_set():
            raise _Aborted(f"{self.what}: stopped, another layer of the pull failed")
        if time.monotonic() > self.deadline:
            raise RegistryUnavailable(f"{self.what}: download did not finish within {self.budget:.0f} s "
                                      f"({self.n} bytes received)")
        try:
            # read1: what has arrived (one socket read), so the deadline is checked as bytes trickle in.
            data: bytes = self.raw.read1(n) if hasattr(self.raw, "read1") else self.raw.read(n)
        except (OSError, http.client.HTTPException) as e:
            raise RegistryUnavailable(f"{self.what}: download failed after {self.n} bytes: {e}") from None
        self.n += len(data)
        now = time.monotonic()
        if now - self.last > 0.1 or not data:
            self.last = now
            self.cb(self.n)
        return data


def client_for(store: ImageStore, domain: str, auth: Auth | None = None) -> Client:
    """A client of the registry that serves a reference's domain, insecure if the store's settings
    say so."""
    host = registry_host(domain)
    return Client(host, auth or Auth(), insecure=store.registries.is_insecure(host))


def pull(store: ImageStore, ref: str, auth: Auth | None = None, progress: ProgressFn | None = None,
         client: Client | None = None) -> str:
    """Pull ``ref`` into the store; returns the image id. A docker.io name goes to each registry
    mirror first: the first that has it serves the whole pull; one that fails (lacks it, is down,
    serves something broken) leaves nothing behind, and the next is asked, Docker Hub last."""
    r = refs.parse(ref)
    if client is None and r.domain == refs.DEFAULT_DOMAIN:
        for url in store.registries.mirrors:
            u = urllib.parse.urlsplit(url)
            cl = Client(u.netloc, Auth(), scheme=u.scheme, insecure=store.registries.is_insecure(u.netloc))
            try:
                return _pull(store, r, progress, cl)
            except ImageError as e:
                log.info("pull %s: mirror %s: %s; trying the next", ref, url, e)
            finally:
                cl.close()
    cl = client or client_for(store, r.domain, auth)
    try:
        return _pull(store, r, progress, cl)
    finally:
        if client is None:
            cl.close()


def _pull(store: ImageStore, r: refs.Reference, progress: ProgressFn | None, cl: Client) -> str:
    emit = progress or (lambda p: None)
    created_blobs: list[str] = []
    created_chains: list[str] = []
    try:
        tag_or_digest = r.digest or r.tag
        emit(Progress("", f"{r.tag or r.digest}: Pulling from {r.familiar_name}"))
        body, media, digest = cl.get_manifest(r.path, tag_or_digest)
        doc = json.loads(body)
        if media in (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST) or "manifests" in doc:
            chosen = _choose_platform(doc, f"{r.familiar()}")
            child, _, _ = _descriptor(chosen, f"{r.familiar()} index entry")
            body, media, manifest_digest = cl.get_manifest(r.path, child)
            doc = json.loads(body)
        else:
            manifest_digest = digest
        if media not in (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST, ""):
            raise InvalidArchive(f"{r.familiar()}: unsupported manifest media type {media!r}")
        if not isinstance(doc.get("layers"), list):
            raise InvalidArchive(f"{r.familiar()}: the manifest has no layers list")
        cdigest, csize, _ = _descriptor(doc.get("config"), "manifest config")
        if csize > MAX_MANIFEST:
            raise InvalidArchive(f"config {cdigest} is larger than {MAX_MANIFEST} bytes")
        if not store.content.exists(cdigest):
            resp = cl.open_blob(r.path, cdigest)
            try:
                cbody = _Counting(resp.resp, lambda n: None, f"config {cdigest}", csize, cl.timeout)
                store.content.ingest(cbody, cdigest, csize, what=f"config {cdigest}")  # type: ignore[arg-type]
            finally:
                resp.close()
            created_blobs.append(cdigest)
        config_bytes = store.content.read_bytes(cdigest)
        try:
            cfg = load_json(config_bytes, f"config {cdigest}")
            diff_ids = cfg["rootfs"]["diff_ids"]
        except (KeyError, TypeError):
            raise InvalidArchive(f"config {cdigest}: no rootfs.diff_ids") from None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(doc["layers"]):
            raise InvalidArchive(f"config {cdigest}: {len(diff_ids)} diff_ids for {len(doc['layers'])} layers")
        for d in diff_ids:
            check_digest(d, f"config {cdigest}: rootfs.diff_ids")
        layers: list[tuple[str, int, str]] = []
        wanted: list[_Wanted] = []
        for i, (ldesc, diff_id) in enumerate(zip(doc["layers"], diff_ids, strict=True)):
            ldigest, lsize, lmedia = _descriptor(ldesc, f"layer {i}")
            if lmedia and lmedia not in LAYER_MEDIA_TYPES:
                raise InvalidArchive(f"layer {i} ({ldigest}): unsupported media type {lmedia!r}")
            layers.append((ldigest, lsize, lmedia or MEDIA_OCI_LAYER))
            wanted.append(_Wanted(ldigest, lsize, diff_id))
        _fetch_layers(store, cl, r.path, wanted, emit, created_chains)
        names = [str(r)]
        image = store._record_image(config_bytes, layers, names, manifest_bytes=body,
                                    repo_digests=[f"{r.familiar_name}@{manifest_digest}"])
        emit(Progress("", f"Digest: {manifest_digest}", digest=manifest_digest))
        emit(Progress("", f"Status: Downloaded newer image for {r.familiar()}", image_id=image.id,
                      digest=manifest_digest, reference=str(r)))
        return image.id
    except BaseException:
        store._forget_new(created_blobs, created_chains)
        raise


@dataclass
class _Wanted:
    digest: str
    size: int
    diff_id: str
    tmp: Path | None = None  # unpacked, not yet installed
    stats: LayerStats | None = None

    @property
    def short(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


PARALLEL = 3  # layers downloaded and unpacked at once, as dockerd's max-concurrent-downloads


def _fetch_layers(store: ImageStore, cl: Client, path: str, wanted: list[_Wanted], emit: ProgressFn,
                  created_chains: list[str]) -> None:
    """Download and unpack the layers not here yet, each streamed from the socket through its digest
    check into the snapshotter (no blob file, nothing read back: a tar-split keeps what push and
    save need), up to PARALLEL at once; then install them in order. An image bound (which counts
    the layers in order) makes it one at a time."""
    chains = chain_ids([w.diff_id for w in wanted])
    todo = []
    for w, chain in zip(wanted, chains, strict=True):
        if store.snapshotter.exists(chain):
            emit(Progress(w.short, "Already exists", w.size, w.size))
        else:
            todo.append(w)
    budget = store.limits.budget()
    abort = threading.Event()

    def fetch(w: _Wanted, client: Client) -> None:
        what = f"layer {w.digest}"
        emit(Progress(w.short, "Pulling fs layer", 0, w.size))
        if store.content.exists(w.digest):  # a blob an older agent kept
            with store.content.open(w.digest) as f:
                w.tmp, w.stats = store.snapshotter.unpack(f, what, budget.bound())
        else:
            w.tmp, w.stats = _download_unpacked(store, client, path, w, emit, abort, budget.bound())
        budget.spend(w.stats.tar_size)
        if w.stats.diff_id != w.diff_id:
            raise InvalidArchive(f"{what}: diff_id mismatch: config says {w.diff_id}, content is {w.stats.diff_id}")
        emit(Progress(w.short, "Download complete", w.size, w.size))

    try:
        if len(todo) <= 1 or store.limits.image is not None:
            for w in todo:
                fetch(w, cl)
        else:
            clients = [cl.fork() for _ in range(min(PARALLEL, len(todo)))]
            free = list(clients)
            lock = threading.Lock()

            def run(w: _Wanted) -> None:
                with lock:
                    client = free.pop()
                try:
                    fetch(w, client)
                except BaseException:
                    abort.set()
                    raise
                finally:
                    with lock:
                        free.append(client)

            try:
                with ThreadPoolExecutor(len(clients), thread_name_prefix="pull") as pool:
                    futures = [pool.submit(run, w) for w in todo]
                    errors = [f.exception() for f in futures]
            finally:
                for c in clients:
                    c.close()
            first = next((e for e in errors if e is not None and not isinstance(e, _Aborted)), None)
            if first is not None:
                raise first
        parent = ""
        for w, chain in zip(wanted, chains, strict=True):
            if w.tmp is not None and w.stats is not None:
                store.snapshotter.install(w.tmp, parent, w.stats)
                if w.stats.unpacked:
                    created_chains.append(chain)
                emit(Progress(w.short, "Pull complete", w.size, w.size))
            parent = chain
    finally:
        for w in wanted:
            if w.tmp is not None:
                store.snapshotter.discard(w.tmp)


class _Aborted(RegistryError):
    """Another layer of the same pull failed; this one stopped."""


class _Body(io.RawIOBase):
    """A blob's body as the unpack reads it: at most its declared size, hashed as it passes."""

    def __init__(self, raw: _Counting, size: int) -> None:
        self._raw = raw
        self.left = size
        self.size = 0
        self._hash = StreamHash()  # beside the unpack, on its own thread (hashing.py)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.left <= 0:
            return 0
        data = self._raw.read(min(len(b), self.left))
        n = len(data)
        b[:n] = data
        self._hash.update(data)
        self.left -= n
        self.size += n
        return n

    def drain(self) -> None:
        while self.left > 0 and (data := self._raw.read(min(READ, self.left))):
            self._hash.update(data)
            self.left -= len(data)
            self.size += len(data)

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _download_unpacked(store: ImageStore, cl: Client, path: str, w: _Wanted, emit: ProgressFn,
                       abort: threading.Event, bound: Bound | None) -> tuple[Path, LayerStats]:
    what = f"layer {w.digest}"
    resp = cl.open_blob(path, w.digest)
    try:
        counting = _Counting(resp.resp, _reporter(emit, w.short, "Downloading", w.size), what, w.size,
                             cl.timeout, abort)
        body = _Body(counting, w.size)

        def check() -> None:
            body.drain()
            if body.size != w.size:
                raise InvalidArchive(f"{what}: truncated stream: {w.size - body.size} of {w.size} bytes missing")
            if counting.read(1):
                raise InvalidArchive(f"{what}: longer than its declared size {w.size}")
            if body.digest() != w.digest:
                raise InvalidArchive(f"{what}: digest mismatch: expected {w.digest}, got {body.digest()}")

        try:
            tmp, stats = store.snapshotter.unpack(io.BufferedReader(body, READ), what, bound)
        except InvalidArchive as e:
            if "expands to more than" in str(e):
                raise
            check()  # a blob that is not what the registry said: say that, not what its bytes broke
            raise
        try:
            check()
        except BaseException:
            store.snapshotter.discard(tmp)
            raise
        return tmp, stats
    finally:
        resp.close()


# --- push ----------------------------------------------------------------------------------------------

def _mount_sources(store: ImageStore, image_repo_digests: Sequence[str], domain: str, path: str) -> list[str]:
    out = []
    for rd in image_repo_digests:
        with contextlib.suppress(ImageError):
            p = refs.parse(rd, default_tag=False)
            if p.domain == domain and p.path != path:
                out.append(p.path)
    return out


def push(store: ImageStore, ref: str, auth: Auth | None = None, progress: ProgressFn | None = None,
         client: Client | None = None, chunk_size: int = CHUNK_SIZE) -> str:
    """Push the image ``ref`` names to its registry; returns the manifest digest."""
    emit = progress or (lambda p: None)
    r = refs.parse(ref)
    if r.digest and not r.tag:
        raise ImageError(f"push needs a tag: {ref}")
    image = store.get(ref)
    cl = client or client_for(store, r.domain, auth)
    scope = f"repository:{r.path}:pull,push"
    try:
        emit(Progress("", f"The push refers to repository [{r.familiar_name if r.domain == refs.DEFAULT_DOMAIN else r.name}]"))
        sources = _mount_sources(store, image.repo_digests, r.domain, r.path)

        def place(digest: str, size: int, short: str) -> str | None:
            """None when the registry has the blob (or mounted it); else an upload location."""
            if cl.has_blob(r.path, digest, scope):
                emit(Progress(short, "Layer already exists", size, size))
                return None
            location = None
            for src in sources:
                try:
                    location = cl.mount_blob(r.path, digest, src)
                except RegistryError:
                    continue
                if location is None:
                    emit(Progress(short, f"Mounted from {src}", size, size))
                    return None
            return location or cl.start_upload(r.path)

        chosen = []
        for layer, (odigest, osize, omedia) in zip(store.local_layers(image), store._layer_descriptors(image),
                                                   strict=True):
            short = odigest.removeprefix("sha256:")[:12]
            emit(Progress(short, "Preparing", 0, osize))
            if not layer.from_blob:
                # Its blob is not kept here; the registry may have it still (pushed back where it came
                # from): then the manifest stays the one pulled. Else the tar made again, uncompressed.
                original = LocalLayer(odigest, osize, omedia, layer.diff_id, layer.chain, True)
                location = place(odigest, osize, short)
                if location is None:
                    chosen.append(original)
                    continue
                short = layer.digest.removeprefix("sha256:")[:12]
                if cl.has_blob(r.path, layer.digest, scope):
                    emit(Progress(short, "Layer already exists", layer.size, layer.size))
                    chosen.append(layer)
                    continue
            else:
                location = place(layer.digest, layer.size, short)
            chosen.append(layer)
            if location is None:
                continue
            with store.open_layer(layer) as f:
                cl.upload(r.path, location, f, layer.digest, layer.size,
                          _reporter(emit, short, "Pushing", layer.size), chunk_size)
            emit(Progress(short, "Pushed", layer.size, layer.size))
        cdigest = image.id
        csize = store.content.size(cdigest)
        short = cdigest.removeprefix("sha256:")[:12]
        location = place(cdigest, csize, short)
        if location is not None:
            with store.content.open(cdigest) as f:
                cl.upload(r.path, location, f, cdigest, csize, _reporter(emit, short, "Pushing", csize), chunk_size)
            emit(Progress(short, "Pushed", csize, csize))
        manifest_bytes = store.manifest_for(image, chosen)
        media = str(json.loads(manifest_bytes).get("mediaType") or MEDIA_OCI_MANIFEST)
        digest = cl.put_manifest(r.path, r.tag, manifest_bytes, media)
        with store._locked() as records:
            rec = records.images.get(image.id)
            if rec is not None:
                rec["repo_digests"] = sorted(set(rec.get("repo_digests", [])) | {f"{r.familiar_name}@{digest}"})
        emit(Progress("", f"{r.tag}: digest: {digest} size: {len(manifest_bytes)}", digest=digest))
        return digest
    finally:
        if client is None:
            cl.close()


def login(host: str, auth: Auth) -> str:
    """Check credentials against a registry (GET /v2/ through its authentication)."""
    cl = Client(registry_host(host), auth)
    try:
        cl.ping()
    finally:
        cl.close()
    return "Login Succeeded"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def iter_chunks(f: IO[bytes], n: int = READ) -> Iterator[bytes]:
    while chunk := f.read(n):
        yield chunk


__all__ = ["DOCKER_HUB", "DOCKER_INDEX_SERVER", "Auth", "Client", "Progress", "RegistryError", "Unauthorized",
           "config_key", "login", "pull", "push"]
