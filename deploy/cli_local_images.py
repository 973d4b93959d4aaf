"""`build`, `save`, `load` and `import` without click, grpc or protobuf (about 0.2 s of CPU of each
command here): through the agent's local API (deploy/local.py), the archive's and the context's
bytes as DATA frames (agent/local_wire.py). deploy/entry.py sends them here.

As deploy/cli_local.py: each returns the exit status, or None to hand the command to click
(deploy/cli_images.py, deploy/cli.py), only before anything was sent: for an argv the table
parser is unsure of, a terminal where an archive would go, a tag that needs the full reference
grammar to be judged, or an agent without a local API.
"""

from __future__ import annotations

import os
import sys

from deploy import display
from deploy.local import Call, CallError, LocalClient, NotServed, daemon_error
from deploy.options import BUILD, IMPORT, LOAD, PULL, SAVE, Unsupported, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, BinaryIO

CHUNK = 1 << 20
IMAGES = "images"  # the local API's name for images.proto's service


def save(host: str, argv: Sequence[str]) -> int | None:
    try:
        o, refs = parse(SAVE, argv)
        if not refs or (not o["output"] and os.isatty(1)):
            return None  # click says what is missing, or refuses the terminal
        call = LocalClient(host).open("Save", IMAGES)
    except (Unsupported, NotServed):
        return None
    output = o["output"]
    tmp = output + ".partial"  # a failed save leaves no half archive under the asked name
    try:
        try:
            out = open(tmp, "wb") if output else None  # noqa: SIM115 - closed below
        except OSError as e:
            return _fail(f"failed to save to {output}: {e.strerror}")
        if out is not None:
            # The agent writes the archive into our file itself (agent/local_wire.py "file"); if it
            # cannot, the bytes come as DATA frames as to stdout.
            call.close()
            call = LocalClient(host).open("Save", IMAGES, file=out.fileno())
            call.send({"refs": list(refs), "format": o["fmt"]})
            try:
                for _ in call:
                    pass
                out.close()
                os.replace(tmp, output)
                return 0
            except CallError as e:
                if not (e.code == "FAILED_PRECONDITION" and e.details.startswith("file:")):
                    out.close()
                    raise
            call.close()
            out.seek(0)
            out.truncate()
            call = LocalClient(host).open("Save", IMAGES)
        call.send({"refs": list(refs), "format": o["fmt"]})
        try:
            for msg in call:
                data = msg.get("", b"")
                if out is not None:
                    out.write(data)
                else:
                    _write_all(1, data)
        finally:
            if out is not None:
                out.close()
    except CallError as e:
        if output:
            _unlink(tmp)
        return _failed(e, host)
    except OSError as e:
        _unlink(tmp)
        return _fail(f"failed to save to {output}: {e.strerror}")
    finally:
        call.close()
    if output:
        os.replace(tmp, output)
    return 0


def load(host: str, argv: Sequence[str]) -> int | None:
    try:
        o, args = parse(LOAD, argv)
        if args or (not o["input_"] and os.isatty(0)):
            return None
        src: BinaryIO = open(o["input_"], "rb") if o["input_"] else sys.stdin.buffer  # noqa: SIM115
    except Unsupported:
        return None
    except OSError as e:
        return _fail(f"open {o['input_']}: {e.strerror}")
    try:
        resp = _stream(LocalClient(host), "Load", IMAGES, None, src)
    except NotServed:
        return None
    except CallError as e:
        return _failed(e, host)
    finally:
        src.close()
    if not o["quiet"]:
        for i in resp.get("images", []):
            for t in i.get("repo_tags") or []:
                display.echo(f"Loaded image: {t}")
            if not i.get("repo_tags"):
                display.echo(f"Loaded image ID: {i['id']}")
    return 0


def import_(host: str, argv: Sequence[str]) -> int | None:
    try:
        o, args = parse(IMPORT, argv)
        if not 1 <= len(args) <= 2:
            return None
        source, reference = args[0], args[1] if len(args) > 1 else ""
        src: BinaryIO = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    except Unsupported:
        return None
    except OSError as e:
        return _fail(f"open {source}: {e.strerror}")
    header = {"import_header": {"reference": reference, "changes": list(o["change"]), "message": o["message"]}}
    try:
        resp = _stream(LocalClient(host), "ImportImage", "", header, src)
    except NotServed:
        return None
    except CallError as e:
        return _failed(e, host)
    finally:
        src.close()
    display.echo(resp["id"])
    return 0


def build(host: str, argv: Sequence[str]) -> int | None:
    from pathlib import Path

    from deploy import credentials

    try:
        o, args = parse(BUILD, argv)
        if len(args) != 1 or not all(_plain_tag(t) for t in o["tags"]):
            return None  # click's path judges a tag with the full reference grammar
        auths = credentials.all_auths()
    except (Unsupported, credentials.BadConfig):
        return None
    root = Path(args[0])
    if not root.is_dir():
        return _fail(f"unable to prepare context: path {args[0]!r} not found")
    df_path = Path(o["file"]) if o["file"] else root / "Dockerfile"
    try:
        dockerfile = df_path.read_bytes().decode()
    except (OSError, UnicodeDecodeError):
        return None  # click's path words these errors
    build_args: dict[str, str] = {}
    for a in o["build_args"]:
        k, eq, v = a.partition("=")
        build_args[k] = v if eq else os.environ.get(k, "")
    options = {"dockerfile": dockerfile, "dockerfile_name": df_path.name if o["file"] else "Dockerfile",
               "tags": list(o["tags"]), "build_args": build_args, "no_cache": o["no_cache"], "target": o["target"],
               "network": o["network"], "labels": dict(lbl.partition("=")[::2] for lbl in o["labels"]),
               "auths": auths}
    try:
        call = LocalClient(host).open("Build", IMAGES)
    except NotServed:
        return None
    import tempfile

    from deploy.buildcontext import write_context

    rel_df = os.path.relpath(df_path.resolve(), root.resolve())
    image_id = ""
    try:
        with tempfile.TemporaryFile() as tar:
            write_context(root, tar, rel_df, warn=_warn)
            size = tar.tell()
            tar.seek(0)
            if not o["quiet"]:
                display.echo(f"Sending build context to dockyard agent  {display.human_size(size)}")
            try:
                call.send({"options": options})
                while data := tar.read(CHUNK):
                    call.send_data(data)
                call.done_sending()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent refused and closed: its error is in the answer
        for ev in call:
            image_id = ev.get("image_id") or image_id
            if ev.get("stream") and not o["quiet"]:
                sys.stdout.write(ev["stream"])
                sys.stdout.flush()
    except CallError as e:
        return _failed(e, host)
    finally:
        call.close()
    if o["quiet"]:
        display.echo(image_id)
    return 0


def pull(host: str, argv: Sequence[str]) -> int | None:
    """`pull -q`, or docker's status lines when stdout is no terminal (a terminal gets click's bars)."""
    from deploy import credentials

    try:
        o, args = parse(PULL, argv)
        if len(args) != 1 or not _plain_tag(args[0]) or (not o["quiet"] and os.isatty(1)):
            return None
        ref = args[0]
        auth = credentials.auth_for(_domain(ref))
        call = LocalClient(host).open("Pull", IMAGES)
    except (Unsupported, credentials.BadConfig, NotServed):
        return None
    shown: dict[str, str] = {}
    reference = ""
    try:
        call.send({"ref": ref, "auth": auth})
        for p in call:
            reference = p.get("reference") or reference
            if o["quiet"]:
                continue
            if not p.get("id"):
                display.echo(p.get("status", ""))
            elif shown.get(p["id"]) != p.get("status") and p.get("status") not in ("Downloading", "Extracting"):
                shown[p["id"]] = p.get("status", "")
                display.echo(f"{p['id']}: {p.get('status', '')}")
    except CallError as e:
        return _failed(e, host)
    finally:
        call.close()
    display.echo(reference)
    return 0


def _domain(ref: str) -> str:
    """The registry of a reference, as docker splits it (its first component when that has a dot or
    a port or is localhost), for the credentials to send."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _stream(cl: LocalClient, method: str, service: str, first: dict[str, Any] | None, src: BinaryIO) -> dict[str, Any]:
    """The call with ``src`` as its stream: a regular file is named by its descriptor and read by the
    agent itself (no copy through the socket); anything else, or an agent that cannot open it, gets
    the bytes as DATA frames. NotServed before anything was asked."""
    import stat

    if stat.S_ISREG(os.fstat(src.fileno()).st_mode):
        call = cl.open(method, service, file=src.fileno())
        try:
            if first is not None:
                call.send(first)
            call.done_sending()
            for resp in call:
                return resp
            raise CallError("INTERNAL", "no response")
        except CallError as e:
            if not (e.code == "FAILED_PRECONDITION" and e.details.startswith("file:")):
                raise
        finally:
            call.close()
    call = cl.open(method, service)
    try:
        if first is not None:
            call.send(first)
        return _upload(call, src)
    finally:
        call.close()


def _upload(call: Call, src: BinaryIO) -> dict[str, Any]:
    """Send the stream as DATA frames; the one response."""
    try:
        while data := src.read(CHUNK):
            call.send_data(data)
        call.done_sending()
    except OSError:
        pass  # the agent refused and closed: its error is in the answer
    for resp in call:
        return resp
    raise CallError("INTERNAL", "no response")


def _plain_tag(tag: str) -> bool:
    """A tag surely valid in docker's grammar (lowercase path, optional host:port and tag); the
    others go to click's path, which parses them fully and words any error."""
    name, colon, t = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "")
    if colon and not (t and len(t) <= 128 and t[0] not in ".-" and t.isascii()
                      and all(c.isalnum() or c in "_.-" for c in t)):
        return False
    parts = name.split("/")
    if len(parts) > 1 and (":" in parts[0] or "." in parts[0] or parts[0] == "localhost"):
        host, _, port = parts[0].partition(":")
        if not host or not all(c.isalnum() or c in ".-" for c in host) or (port and not port.isdigit()):
            return False
        parts = parts[1:]
    return bool(parts) and all(
        p and p.isascii() and p[0].isalnum() and p[-1].isalnum() and p == p.lower()
        and all(c.isalnum() or c in "._-" for c in p) and ".." not in p for p in parts)


def _warn(msg: str) -> None:
    sys.stderr.write(f"WARNING: {msg}\n")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fail(msg: str) -> int:
    sys.stderr.write(msg + "\n")
    return 1


def _failed(e: CallError, host: str) -> int:
    return _fail(daemon_error(e.code, e.details, host))
