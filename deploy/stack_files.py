"""A stack's secrets and configs: the top-level `secrets:`/`configs:` and each service's, in
Compose's short and long syntax, checked at the boundary like the rest of the file.

    secrets:
      db_password: {file: ./db_password.txt}   # made by the deploy as STACK_db_password
      api_key: {external: true}                # must exist already (dockyard secret create api_key -)
      tls: {file: ./tls.pem, name: site_tls}   # `name:` is the name in the cluster
    configs:
      nginx: {file: ./nginx.conf}
    services:
      web:
        secrets: [db_password, {source: api_key, target: key, uid: "1000", gid: "1000", mode: 0400}]
        configs: [{source: nginx, target: /etc/nginx/nginx.conf}]

A `file:` is read at deploy time, relative to the stack file's directory, and sent with the deploy;
an object with that name and other data is refused (they never change). A secret's target is a
name under /run/secrets (default: the secret's key) or an absolute path; a config's is an absolute
path (default: /KEY).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scheduler.model import FileRef
from scheduler.objects import MAX_SIZE, ObjectError, make_ref

if TYPE_CHECKING:
    from deploy.stack import _At

_TOP = frozenset({"file", "external", "name", "labels"})
_UNSUPPORTED_TOP = {"environment": "put the value in a file and use `file:`",
                    "content": "put the value in a file and use `file:`",
                    "driver": "", "driver_opts": "", "template_driver": ""}
_LONG = frozenset({"source", "target", "uid", "gid", "mode"})


@dataclass(frozen=True)
class StackObject:
    kind: str                                # secret | config
    key: str                                 # its name in the stack file
    name: str                                # its name in the cluster
    data: bytes | None = None                # from `file:`; None when external
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def external(self) -> bool:
        return self.data is None


def top_objects(at: _At | None, kind: str, stack: str) -> dict[str, StackObject]:
    from deploy.stack import _labels

    out: dict[str, StackObject] = {}
    if at is None:
        return out
    for key, v in at.items():
        if v.value is None:
            v.fail(f"{kind} {key!r} needs `file:` or `external: true`")
        v.mapping(_TOP, _UNSUPPORTED_TOP)
        ext_at = v.child("external")
        external = ext_at.boolean() if ext_at is not None else False
        name_at = v.child("name")
        name = name_at.string() if name_at is not None else (key if external else f"{stack}_{key}")
        try:
            make_ref(kind, name)  # the name's rules
        except ObjectError as e:
            (name_at or v).fail(str(e))
        file_at = v.child("file")
        if external:
            if file_at is not None:
                file_at.fail(f"an external {kind} exists already: it has no file")
            out[key] = StackObject(kind, key, name)
            continue
        if file_at is None:
            v.fail(f"{kind} {key!r} needs `file:` or `external: true`")
        path = os.path.join(os.path.dirname(os.path.abspath(v.file)), os.path.expanduser(file_at.string()))
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SIZE + 1)
        except OSError as e:
            file_at.fail(f"cannot read {path}: {e.strerror or e}")
        if len(data) > MAX_SIZE:
            file_at.fail(f"{path} is over the limit of {MAX_SIZE // 1024} KiB for a {kind}")
        if not data:
            file_at.fail(f"{path} is empty")
        out[key] = StackObject(kind, key, name, data, _labels(v.child("labels")))
    return out


def service_refs(at: _At | None, kind: str, declared: dict[str, StackObject]) -> tuple[FileRef, ...]:
    """A service's `secrets:` or `configs:`: each names a top-level one by its key."""
    if at is None:
        return ()
    out: list[FileRef] = []
    for el in at.elements():
        if isinstance(el.value, str):
            source_at, target, uid, gid, mode = el, "", 0, 0, 0o444
        else:
            el.mapping(_LONG)
            source_at = el.child("source")  # type: ignore[assignment]
            if source_at is None:
                el.fail(f"a {kind} needs `source:`")
            target = _opt_str(el.child("target"))
            uid, gid = _id(el.child("uid")), _id(el.child("gid"))
            mode = _mode(el.child("mode"))
        key = source_at.string()
        obj = declared.get(key)
        if obj is None:
            source_at.fail(f"{kind} {key!r} is not declared under the top-level {kind}s:"
                           + (f" (declared: {', '.join(sorted(declared))})" if declared else ""))
        if kind == "config" and target == "":
            target = f"/{key}"  # docker's default is the key, not the cluster name
        elif kind == "secret" and target == "":
            target = key
        try:
            out.append(make_ref(kind, obj.name, target, uid, gid, mode))
        except ObjectError as e:
            el.fail(str(e))
    return tuple(out)


def _opt_str(at: _At | None) -> str:
    return at.string() if at is not None else ""


def _id(at: _At | None) -> int:
    """Compose writes uid and gid as strings ("1000"); a number is taken too."""
    if at is None:
        return 0
    text = str(at.value) if isinstance(at.value, int) and not isinstance(at.value, bool) else at.string()
    if not text.isdigit() or int(text) >= 1 << 32:
        at.fail(f"expected a numeric id, got {text!r}")
    return int(text)


def _mode(at: _At | None) -> int:
    """An octal mode: 0440 (YAML reads it as octal already), "0440" or "0o440"."""
    if at is None:
        return 0o444
    v = at.value
    if isinstance(v, int) and not isinstance(v, bool):
        mode = v
    else:
        text = at.string().strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            at.fail(f"invalid mode {at.value!r}: expected octal, like 0440")
    if not 0 <= mode <= 0o777:
        at.fail(f"mode {mode:o} is out of range (0 to 0777)")
    return mode


def parse_flag(kind: str, text: str) -> FileRef:
    """`--secret NAME` or `--secret source=NAME,target=T,uid=U,gid=G,mode=0400` (docker's; `--config`
    likewise); ObjectError naming what is wrong."""
    if "=" not in text:
        return make_ref(kind, text)
    fields: dict[str, str] = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        k = {"src": "source", "dst": "target"}.get(k.strip(), k.strip())
        if not sep or k not in _LONG:
            raise ObjectError(f"--{kind} {text!r}: {part!r} is not one of source=, target=, uid=, gid=, mode=")
        fields[k] = v.strip()
    if not fields.get("source"):
        raise ObjectError(f"--{kind} {text!r}: source= is required")
    ids = {}
    for what in ("uid", "gid"):
        v = fields.get(what, "0")
        if not v.isdigit():
            raise ObjectError(f"--{kind} {text!r}: {what} {v!r} is not a number")
        ids[what] = int(v)
    try:
        mode = int(fields.get("mode", "0444").lower().removeprefix("0o"), 8)
    except ValueError:
        raise ObjectError(f"--{kind} {text!r}: mode {fields['mode']!r} is not octal") from None
    return make_ref(kind, fields["source"], fields.get("target", ""), ids["uid"], ids["gid"], mode)
