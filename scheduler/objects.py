"""Cluster secrets and configs: named, immutable blobs that services get as files.

Stored under ``/dockyard/secrets/<name>`` and ``/dockyard/configs/<name>`` as JSON. A config's
data is stored as it is (docker shows it in ``config inspect``); a secret's is sealed with
AES-256-GCM under the scheduler's secrets key (``Sealer``), with the kind and name as associated
data, so etcd, its snapshots and its backups hold no secret in the clear and a sealed value copied
under another name does not open. The key is 32 random bytes in a file of the scheduler's
(``<state-dir>/secrets.key`` unless ``--secrets-key`` names another, mode 0600): every replica of a
cluster needs the same file, as Swarm's managers share the raft key. Each sealed value names the key
id (the first 8 bytes of its SHA-256, hex) it was sealed with, so a replica holding another key says
so instead of failing on a tag.

Like docker's, a secret or config never changes: a new value is a new name (a stack deploy whose
file has changed is refused with that hint), and one a service uses cannot be removed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets as pyrandom
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from scheduler.model import FileRef, ServiceSpec

KINDS = ("secret", "config")
MAX_SIZE = 500 * 1024  # docker's limit for one secret or config
SECRETS_DIR = "/run/secrets"  # where a secret with a relative target goes, as in docker
_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9])?$")


class ObjectError(ValueError):
    """Bad input about a secret or config; the message names what is wrong."""


class KeyMismatch(Exception):
    """A sealed secret of another key than this replica's."""


@dataclass(frozen=True, slots=True)
class FileObject:
    kind: str                                    # secret | config
    name: str
    data: bytes                                  # in the clear (sealed only in etcd)
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def check_name(kind: str, name: str) -> None:
    if kind not in KINDS:
        raise ObjectError(f"unknown kind {kind!r}: expected secret or config")
    if not _NAME.match(name):
        raise ObjectError(f"invalid {kind} name {name!r}: 1 to 64 letters, digits, '_', '.' or '-', "
                          "starting and ending with a letter or digit")


def check_object(obj: FileObject) -> None:
    check_name(obj.kind, obj.name)
    if not obj.data:
        raise ObjectError(f"{obj.kind} {obj.name}: its data is empty")
    if len(obj.data) > MAX_SIZE:
        raise ObjectError(f"{obj.kind} {obj.name}: {len(obj.data):,} bytes is over the limit of {MAX_SIZE:,} "
                          f"({MAX_SIZE // 1024} KiB, as docker's)")


def make_ref(kind: str, source: str, target: str = "", uid: int = 0, gid: int = 0, mode: int = 0o444) -> FileRef:
    """A service's use of ``source``, its target made absolute: a secret's relative target (or none)
    goes under /run/secrets, a config's default is /<name> (both as docker does)."""
    check_name(kind, source)
    if not target:
        target = f"{SECRETS_DIR}/{source}" if kind == "secret" else f"/{source}"
    elif not target.startswith("/"):
        if kind == "config":
            raise ObjectError(f"config {source}: target {target!r} is not an absolute path")
        if "/" in target or target in (".", ".."):
            raise ObjectError(f"secret {source}: invalid target {target!r}: a file name under {SECRETS_DIR}, "
                              "or an absolute path")
        target = f"{SECRETS_DIR}/{target}"
    norm = os.path.normpath(target)
    if norm != target.rstrip("/") or ".." in target.split("/") or norm == "/" or "\0" in target:
        raise ObjectError(f"{kind} {source}: invalid target {target!r}")
    for what, v in (("uid", uid), ("gid", gid)):
        if not 0 <= v < 1 << 32:
            raise ObjectError(f"{kind} {source}: {what} {v} is out of range")
    if not 0 <= mode <= 0o7777:
        raise ObjectError(f"{kind} {source}: mode {mode:o} is out of range")
    return FileRef(source=source, target=norm, uid=uid, gid=gid, mode=mode)


def check_refs(spec: ServiceSpec) -> None:
    """Two files of one service at one target (or one object named twice at one place) is an error."""
    seen: dict[str, str] = {}
    for kind, refs in (("secret", spec.secrets), ("config", spec.configs)):
        for r in refs:
            other = seen.get(r.target)
            if other is not None:
                raise ObjectError(f"{spec.name}: {kind} {r.source} and {other} have the same target {r.target}")
            seen[r.target] = f"{kind} {r.source}"
    for m in spec.mounts:
        if m.target in seen:
            raise ObjectError(f"{spec.name}: {seen[m.target]} and a mount have the same target {m.target}")


def users(kind: str, name: str, specs: list[ServiceSpec]) -> list[str]:
    """The services whose current or previous spec uses the object (a rollback would need it)."""
    return sorted({s.name for s in specs for r in (s.secrets if kind == "secret" else s.configs)
                   if r.source == name})


# --- the key and the sealed record ---------------------------------------------------------------

class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError(f"a secrets key is 32 bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: Path, create: bool = True) -> Sealer:
        """The key in ``path``, made (0600, 32 random bytes) when it does not exist and ``create``.
        A key file that group or others may read is refused, like an ssh key."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            if not create:
                raise ValueError(f"{path}: no secrets key") from None
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(wfd, pyrandom.token_bytes(32))
                os.fsync(wfd)
            finally:
                os.close(wfd)
            try:
                os.link(tmp, path)  # never over a key another process made meanwhile
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            return cls.from_file(path, create=False)
        try:
            st = os.fstat(fd)
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ValueError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others read the "
                                 f"secrets key; chmod 600 {path}")
            key = os.read(fd, 64)
        finally:
            os.close(fd)
        if len(key) != 32:
            raise ValueError(f"{path}: a secrets key is 32 bytes, this file has {len(key)}")
        return cls(key)

    def seal(self, kind: str, name: str, data: bytes) -> dict[str, str]:
        nonce = pyrandom.token_bytes(12)
        box = self._aead.encrypt(nonce, data, f"{kind}/{name}".encode())
        return {"key_id": self.key_id, "nonce": base64.b64encode(nonce).decode(),
                "sealed": base64.b64encode(box).decode()}

    def open(self, kind: str, name: str, record: dict[str, str]) -> bytes:
        if record.get("key_id") != self.key_id:
            raise KeyMismatch(f"{kind} {name} was sealed with secrets key {record.get('key_id')}, and this "
                              f"scheduler holds key {self.key_id}: give every replica the same --secrets-key file")
        try:
            return self._aead.decrypt(base64.b64decode(record["nonce"]), base64.b64decode(record["sealed"]),
                                      f"{kind}/{name}".encode())
        except (InvalidTag, KeyError, ValueError) as e:
            raise KeyMismatch(f"{kind} {name}: its sealed value does not open ({type(e).__name__}): "
                              "it was altered in etcd or stored under another name") from None


def encode(obj: FileObject, sealer: Sealer | None) -> bytes:
    """The etcd value: a secret sealed (``sealer`` required), a config as base64."""
    rec: dict[str, object] = {"name": obj.name, "labels": obj.labels, "created_at": obj.created_at,
                              "size": len(obj.data)}
    if obj.kind == "secret":
        if sealer is None:
            raise ValueError("a secret needs the secrets key to be stored")
        rec.update(sealer.seal(obj.kind, obj.name, obj.data))
    else:
        rec["data"] = base64.b64encode(obj.data).decode()
    return json.dumps(rec, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Stored:
    """What etcd holds of one object, data still sealed (listing needs no key)."""
    kind: str
    name: str
    labels: dict[str, str]
    created_at: float
    size: int
    record: dict[str, str]
    mod_revision: int = 0

    def open(self, sealer: Sealer | None) -> FileObject:
        if self.kind == "secret":
            if sealer is None:
                raise KeyMismatch(f"secret {self.name}: this scheduler has no secrets key")
            data = sealer.open(self.kind, self.name, self.record)
        else:
            data = base64.b64decode(self.record.get("data", ""))
        return FileObject(self.kind, self.name, data, dict(self.labels), self.created_at)


def decode(kind: str, raw: bytes, mod_revision: int = 0) -> Stored:
    rec = json.loads(raw)
    return Stored(kind=kind, name=str(rec["name"]), labels=dict(rec.get("labels") or {}),
                  created_at=float(rec.get("created_at") or 0.0), size=int(rec.get("size") or 0),
                  record={k: v for k, v in rec.items() if k in ("key_id", "nonce", "sealed", "data")},
                  mod_revision=mod_revision)
