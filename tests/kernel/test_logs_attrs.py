"""docker's attribute log options (tag, labels, labels-regex, env, env-regex) on a real agent, in the
json-file lines ("attrs", in docker's key order) and in the local driver's own records, shown by
`logs --details`; and the local driver's on-disk format: size-framed protobuf records, rotated and
gzipped by its defaults' rules, read back whole (a line written in pieces too)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _dir(a: AgentProcess, cid: str) -> Path:
    return a.root / "containers" / cid


def _frames(data: bytes) -> list[bytes]:
    """The records of a local log file, cut by their sizes (checked to agree before and after)."""
    out = []
    while data:
        n = int.from_bytes(data[:4], "big")
        assert data[4 + n:8 + n] == data[:4], "the sizes around a record differ"
        out.append(data[4:4 + n])
        data = data[8 + n:]
    return out


def test_json_file_lines_carry_dockers_attrs_and_logs_details_shows_them(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.cli("run", "-d", "--name", "shop-web", "--label", "app=shop", "--label", "team=a b", "--label", "x=1",
                "-e", "STAGE=prod", "-e", "REGION=eu", "--log-opt", "labels=app,missing",
                "--log-opt", "labels-regex=^te", "--log-opt", "env=STAGE", "--log-opt", "env-regex=^REG",
                "--log-opt", "tag={{.Name}}/{{.ImageName}}", "busybox", "echo", "hi", check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the echo to finish")
    raw = (_dir(a, cid) / "container.log").read_text().splitlines()
    assert len(raw) == 1
    rec = json.loads(raw[0])
    assert list(rec) == ["log", "stream", "attrs", "time"]   # docker's json-file order
    assert rec["attrs"] == {"REGION": "eu", "STAGE": "prod", "app": "shop", "tag": "shop-web/busybox",
                            "team": "a b"}
    assert a.cli("logs", cid, check=True).stdout == "hi\n"
    assert a.cli("logs", "--details", cid, check=True).stdout == \
        "REGION=eu,STAGE=prod,app=shop,tag=shop-web%2Fbusybox,team=a+b hi\n"
    # no attribute options: --details gives docker's lone space
    plain = a.cli("run", "-d", "busybox", "echo", "plain", check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(plain)["State"]["Status"] == "exited", 30, "the echo to finish")
    assert "attrs" not in json.loads((_dir(a, plain) / "container.log").read_text())
    assert a.cli("logs", "--details", plain, check=True).stdout == " plain\n"
    # inspect says the options back as given
    assert a.inspect(cid)["HostConfig"]["LogConfig"]["Config"]["tag"] == "{{.Name}}/{{.ImageName}}"


def test_local_driver_writes_its_own_records_with_attrs_and_pieces(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.cli("run", "-d", "--log-driver", "local", "-e", "STAGE=prod", "--log-opt", "env=STAGE",
                "--log-opt", "tag={{.ID}}", "busybox", "sh", "-c",
                "echo hello; printf 'ab'; sleep 0.3; printf 'cd\\n'; echo oops >&2", check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the writer to finish")
    data = (_dir(a, cid) / "container.log").read_bytes()
    assert not data.startswith(b"{")   # not json lines
    frames = _frames(data)
    assert len(frames) == 4, frames
    # LogEntry: 1 source, 3 line (without its newline), 4 partial (the two pieces), 6 attrs
    assert frames[0].startswith(b"\x0a\x06stdout") and b"\x1a\x05hello" in frames[0]
    assert b"\x1a\x02ab" in frames[1] and b"\x20\x01" in frames[1]
    assert b"\x1a\x02cd" in frames[2] and b"\x20\x01" in frames[2]
    assert frames[3].startswith(b"\x0a\x06stderr")
    attr = b"\x32\x0d\x0a\x05STAGE\x12\x04prod" + b"\x32\x13\x0a\x03tag\x12\x0c" + cid[:12].encode()
    assert all(f.endswith(attr) for f in frames), frames[0]
    r = a.cli("logs", cid, check=True)
    assert (r.stdout, r.stderr) == ("hello\nabcd\n", "oops\n")
    assert a.cli("logs", "--details", "--tail", "1", cid, check=True).stderr == f"STAGE=prod,tag={cid[:12]} oops\n"


def test_local_driver_rotates_and_compresses_by_its_defaults_and_logs_reads_across(clean_agent: AgentProcess) -> None:
    a = clean_agent
    # local's defaults: max-file 5 and compress on (max-size made small here so that it rotates)
    cid = a.cli("run", "-d", "--log-driver", "local", "--log-opt", "max-size=8k", "busybox", "sh", "-c",
                "i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done",
                check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the writer to finish")
    d = _dir(a, cid)
    a.wait_for(lambda: not (d / "container.log.1").exists(), 10, "the newest rotated file to be gzipped")
    names = sorted(p.name for p in d.glob("container.log*"))
    assert names == ["container.log", *[f"container.log.{i}.gz" for i in range(1, 5)]], names
    assert (d / "container.log").stat().st_size <= 8192
    for i in range(1, 5):
        frames = _frames(gzip.decompress((d / f"container.log.{i}.gz").read_bytes()))
        assert frames and sum(len(f) + 8 for f in frames) <= 8192
    out = a.cli("logs", cid, check=True).stdout.splitlines()
    nums = [int(x.split("-")[1]) for x in out]
    assert nums[-1] == 2999 and nums == list(range(nums[0], 3000)), "a gap or a reordering across files"
    assert a.cli("logs", "--tail", "3", cid, check=True).stdout.splitlines() == out[-3:]
