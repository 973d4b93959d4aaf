"""Secrets and configs without a cluster: the sealing (scheduler/objects.py), the key file, the
targets, and the stack file's `secrets:`/`configs:` and `--secret`/`--config` (deploy/stack_files.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deploy.stack import StackError, load_stack
from deploy.stack_files import parse_flag
from scheduler import objects
from scheduler.model import FileRef, ServiceSpec
from scheduler.objects import FileObject, KeyMismatch, ObjectError, Sealer, make_ref


def test_a_secret_is_sealed_and_opens_only_under_its_name_and_key(tmp_path: Path) -> None:
    sealer = Sealer.from_file(tmp_path / "k" / "secrets.key")
    assert os.stat(tmp_path / "k" / "secrets.key").st_mode & 0o777 == 0o600
    raw = objects.encode(FileObject("secret", "db", b"hunter2-hunter2"), sealer)
    assert b"hunter2" not in raw
    st = objects.decode("secret", raw)
    assert st.open(sealer).data == b"hunter2-hunter2" and st.size == 15
    # the same sealed value under another name does not open
    moved = objects.decode("secret", raw.replace(b'"name": "db"', b'"name": "dc"'))
    with pytest.raises(KeyMismatch, match="does not open"):
        moved.open(sealer)
    # a replica with another key says which key it would need
    other = Sealer(os.urandom(32))
    with pytest.raises(KeyMismatch, match=f"sealed with secrets key {sealer.key_id}.*holds key {other.key_id}"):
        st.open(other)
    # a flipped byte of the ciphertext is caught by the tag
    rec = json.loads(raw)
    rec["sealed"] = ("A" if rec["sealed"][0] != "A" else "B") + rec["sealed"][1:]
    with pytest.raises(KeyMismatch):
        objects.decode("secret", json.dumps(rec).encode()).open(sealer)
    # the key file is read again, not replaced
    assert Sealer.from_file(tmp_path / "k" / "secrets.key").key_id == sealer.key_id


def test_a_config_is_stored_as_it_is_and_needs_no_key() -> None:
    st = objects.decode("config", objects.encode(FileObject("config", "app", b"port=1"), None))
    assert st.open(None).data == b"port=1"
    with pytest.raises(ValueError, match="needs the secrets key"):
        objects.encode(FileObject("secret", "x", b"y"), None)


def test_a_readable_or_short_key_file_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "secrets.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    with pytest.raises(ValueError, match="lets group or others read the secrets key; chmod 600"):
        Sealer.from_file(key)
    key.chmod(0o600)
    key.write_bytes(b"short")
    with pytest.raises(ValueError, match="32 bytes, this file has 5"):
        Sealer.from_file(key)


@pytest.mark.parametrize("name, data, problem", [
    ("", b"x", "invalid secret name ''"),
    ("-x", b"x", "invalid secret name '-x'"),
    ("a/b", b"x", "invalid secret name 'a/b'"),
    ("a" * 65, b"x", "invalid secret name"),
    ("ok", b"", "its data is empty"),
    ("ok", b"x" * (500 * 1024 + 1), "over the limit of 512,000"),
])
def test_bad_objects(name: str, data: bytes, problem: str) -> None:
    with pytest.raises(ObjectError, match=problem):
        objects.check_object(FileObject("secret", name, data))


def test_targets() -> None:
    assert make_ref("secret", "db").target == "/run/secrets/db"
    assert make_ref("secret", "db", "pw").target == "/run/secrets/pw"
    assert make_ref("secret", "db", "/etc/pw").target == "/etc/pw"
    assert make_ref("config", "app").target == "/app"
    for kind, target, problem in (("config", "rel/x", "not an absolute path"), ("secret", "../x", "invalid target"),
                                  ("secret", "/etc/../x", "invalid target"), ("secret", "/", "invalid target"),
                                  ("secret", "a/b", "invalid target")):
        with pytest.raises(ObjectError, match=problem):
            make_ref(kind, "db", target)
    with pytest.raises(ObjectError, match="mode 10000 is out of range"):
        make_ref("secret", "db", mode=0o10000)
    spec = ServiceSpec("s", "busybox", secrets=(FileRef("a", "/x"),), configs=(FileRef("b", "/x"),))
    with pytest.raises(ObjectError, match="config b and secret a have the same target /x"):
        objects.check_refs(spec)


def test_flags() -> None:
    assert parse_flag("secret", "db") == FileRef("db", "/run/secrets/db")
    assert parse_flag("secret", "source=db,target=pw,uid=1000,gid=1001,mode=0400") == \
        FileRef("db", "/run/secrets/pw", 1000, 1001, 0o400)
    assert parse_flag("config", "src=app,dst=/etc/app.conf") == FileRef("app", "/etc/app.conf")
    for text, problem in (("target=x", "source= is required"), ("source=db,size=1", "'size=1' is not one of"),
                          ("source=db,uid=root", "uid 'root' is not a number"),
                          ("source=db,mode=9", "mode '9' is not octal")):
        with pytest.raises(ObjectError, match=problem):
            parse_flag("secret", text)


STACK = """\
secrets:
  pw: {file: ./pw.txt}
  ext: {external: true}
  named: {file: ./pw.txt, name: site_pw}
configs:
  app: {file: conf/app.conf}
services:
  web:
    image: busybox
    secrets:
      - pw
      - source: ext
        target: /etc/ext
        uid: "1000"
        gid: 1001
        mode: 0400
      - {source: named, mode: "0o440"}
    configs: [app, {source: app, target: /etc/app.conf}]
"""


def test_a_stacks_secrets_and_configs(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_bytes(b"pw")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.conf").write_bytes(b"conf")
    (tmp_path / "s.yaml").write_text(STACK)
    old = os.getcwd()
    os.chdir("/")  # files are relative to the stack file, not to where the deploy runs
    try:
        stack = load_stack(str(tmp_path / "s.yaml"), "shop")
    finally:
        os.chdir(old)
    web = stack.service("web")
    assert web.secrets == (FileRef("shop_pw", "/run/secrets/pw"), FileRef("ext", "/etc/ext", 1000, 1001, 0o400),
                           FileRef("site_pw", "/run/secrets/named", mode=0o440))
    assert web.configs == (FileRef("shop_app", "/app"), FileRef("shop_app", "/etc/app.conf"))
    got = {(o.kind, o.name): o for o in stack.objects}
    assert set(got) == {("secret", "shop_pw"), ("secret", "ext"), ("secret", "site_pw"), ("config", "shop_app")}
    assert got[("secret", "ext")].external and got[("config", "shop_app")].data == b"conf"
    # and the task's digest changes with them (a new secret rolls the tasks)
    from dataclasses import replace

    assert replace(web, secrets=()).digest != web.digest
    assert replace(web, secrets=(), configs=()).digest == ServiceSpec("shop_web", "busybox").digest


@pytest.mark.parametrize("text, where", [
    ("services:\n  web:\n    image: b\n    secrets: [nope]\n", "4: services.web.secrets[0]: secret 'nope' is not declared"),
    ("secrets:\n  a: {file: ./missing}\nservices:\n  web:\n    image: b\n", "2: secrets.a.file: cannot read"),
    ("secrets:\n  a: {environment: X}\nservices:\n  web:\n    image: b\n", "2: secrets.a.environment: not supported"),
    ("secrets:\n  a:\nservices:\n  web:\n    image: b\n", "needs `file:` or `external: true`"),
    ("secrets:\n  a: {external: true, file: x}\nservices:\n  web:\n    image: b\n", "an external secret exists already"),
    ("secrets:\n  a: {external: true}\nservices:\n  web:\n    image: b\n    secrets: [{source: a, mode: 999}]\n",
     "out of range (0 to 0777)"),
    ("configs:\n  a: {external: true}\nservices:\n  web:\n    image: b\n    configs: [{source: a, target: rel}]\n",
     "target 'rel' is not an absolute path"),
    ("secrets:\n  a: {external: true}\nservices:\n  web:\n    image: b\n    secrets: [{source: a, uid: root}]\n",
     "expected a numeric id"),
])
def test_bad_stack_files_name_the_line(tmp_path: Path, text: str, where: str) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(StackError) as e:
        load_stack(str(f), "shop")
    assert where in str(e.value), str(e.value)
