"""Log drivers and rotation (--log-driver, --log-opt max-size/max-file/compress) on a real agent:
the monitor rotates the file as docker's json-file driver does, the disk stays bounded for a
container that writes as fast as it can, and `logs` reads across the rotated files (--tail,
--since, --timestamps, -f across rotations)."""

from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.agent_harness import CLI, REPO, AgentProcess, _env

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _log_dir(a: AgentProcess, cid: str) -> Path:
    return a.root / "containers" / cid


def _log_files(a: AgentProcess, cid: str) -> dict[str, int]:
    out = {}
    for p in _log_dir(a, cid).glob("container.log*"):
        with contextlib.suppress(FileNotFoundError):   # (rotated away meanwhile)
            out[p.name] = p.stat().st_size
    return out


def _lines(n: int, width: int = 0) -> str:
    """A shell loop printing `n` numbered lines (each padded to `width`)."""
    pad = "x" * width
    return f"i=0; while [ $i -lt {n} ]; do echo line-$i-{pad}; i=$((i+1)); done"


def test_rotation_keeps_max_file_files_and_logs_reads_them_in_order(clean_agent: AgentProcess) -> None:
    a = clean_agent
    # each entry is about 120 bytes of JSON: 2000 of them make ~240 kB, so 10k files rotate ~24 times
    cid = a.cli("run", "-d", "--log-opt", "max-size=10k", "--log-opt", "max-file=3", "busybox", "sh", "-c",
                _lines(2000, 40), check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the writer to finish")
    files = _log_files(a, cid)
    assert set(files) == {"container.log", "container.log.1", "container.log.2"}, files
    assert all(size <= 10_000 for size in files.values()), files
    # docker's json-file lines in each file
    for name in files:
        for raw in (_log_dir(a, cid) / name).read_text().splitlines():
            rec = json.loads(raw)
            assert rec["stream"] == "stdout" and rec["time"].endswith("Z")
    out = a.cli("logs", cid, check=True).stdout.splitlines()
    # what is kept: the newest entries, every one of them, in order, ending with the last line
    assert out[-1].startswith("line-1999-")
    nums = [int(line.split("-")[1]) for line in out]
    assert nums == list(range(nums[0], 2000)), "a gap or a reordering across the rotated files"
    assert 150 < len(nums) < 260
    # --tail reaches back into the rotated files; --timestamps prefixes docker's RFC 3339 stamp
    tail = a.cli("logs", "--tail", str(len(nums) - 5), cid, check=True).stdout.splitlines()
    assert tail == out[5:]
    stamped = a.cli("logs", "-t", "--tail", "2", cid, check=True).stdout.splitlines()
    assert len(stamped) == 2 and stamped[1].endswith(" line-1999-" + "x" * 40)
    assert stamped[0][:4].isdigit() and "T" in stamped[0].split(" ")[0]
    # --since: after the run, nothing; from before it, everything kept
    assert a.cli("logs", "--since", str(int(time.time()) + 5), cid, check=True).stdout == ""
    assert a.cli("logs", "--since", "10m", cid, check=True).stdout.splitlines() == out


def test_a_fast_writer_stays_under_max_size_times_max_file(clean_agent: AgentProcess) -> None:
    a = clean_agent
    # as fast as the container can write: yes(1) prints without stopping
    cid = a.run_detached("--log-opt", "max-size=100k", "--log-opt", "max-file=2", "busybox", "yes",
                         "a fairly long line of output, written as fast as it can be")
    seen_max = 0
    deadline = time.time() + 4
    samples = 0
    while time.time() < deadline:
        total = sum(_log_files(a, cid).values())
        seen_max = max(seen_max, total)
        samples += 1
        time.sleep(0.02)
    # (a line the pipe delivered in two reads is two entries, as docker's partial ones: the last
    # entry may be the end of a line, so look at a few)
    written = a.cli("logs", "--tail", "4", cid, check=True).stdout.splitlines()
    a.cli("rm", "-f", cid, check=True)
    assert any(line.startswith("a fairly long line") for line in written), written
    assert samples > 20
    # two files of at most 100,000 bytes each (docker's units: decimal)
    assert 100_000 < seen_max <= 200_000, seen_max


def test_compress_gzips_the_rotated_files_and_logs_reads_them(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.cli("run", "-d", "--log-opt", "max-size=20k", "--log-opt", "max-file=4", "--log-opt", "compress=true",
                "busybox", "sh", "-c", _lines(1500, 40), check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the writer to finish")
    d = _log_dir(a, cid)
    a.wait_for(lambda: not (d / "container.log.1").exists(), 10, "the last compression")
    names = {p.name for p in d.glob("container.log*")}
    assert names == {"container.log", "container.log.1.gz", "container.log.2.gz", "container.log.3.gz"}, names
    with gzip.open(d / "container.log.1.gz", "rt") as f:
        assert json.loads(f.readline())["stream"] == "stdout"
    out = a.cli("logs", cid, check=True).stdout.splitlines()
    nums = [int(line.split("-")[1]) for line in out]
    assert nums == list(range(nums[0], 1500)) and len(nums) > 300


def test_follow_goes_on_across_rotations(clean_agent: AgentProcess, tmp_path: Path) -> None:
    a = clean_agent
    gate = tmp_path / "gate"
    gate.mkdir()
    # the container says "ready", waits until the follower has seen that, then writes ~10 files' worth
    cid = a.run_detached("--log-opt", "max-size=4k", "--log-opt", "max-file=5", "-v", f"{gate}:/gate", "busybox",
                         "sh", "-c", "echo ready; while [ ! -e /gate/go ]; do sleep 0.05; done; "
                         "i=0; while [ $i -lt 600 ]; do echo follow-$i; i=$((i+1)); "
                         "[ $((i % 50)) = 0 ] && sleep 0.05; done")
    p = subprocess.Popen([*CLI, "-H", a.host, "logs", "-f", cid], stdout=subprocess.PIPE, text=True, env=_env(),
                         cwd=REPO)
    guard = threading.Timer(60, p.kill)   # (a hang fails the test instead of stalling the run)
    guard.start()
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
        (gate / "go").touch()
        got = p.stdout.read().splitlines()
        assert p.wait(timeout=60) == 0
    finally:
        guard.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert got == [f"follow-{i}" for i in range(600)], (len(got), got[:3], got[-3:])
    assert "container.log.4" in _log_files(a, cid)


def test_max_file_1_truncates_and_none_keeps_nothing(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.cli("run", "-d", "--log-opt", "max-size=5k", "busybox", "sh", "-c", _lines(500, 20),
                check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the writer to finish")
    assert set(_log_files(a, cid)) == {"container.log"} and _log_files(a, cid)["container.log"] <= 5000
    assert a.cli("logs", "--tail", "1", cid, check=True).stdout.startswith("line-499-")
    # none: nothing on disk; attach still gets the output; logs says why it has nothing
    r = a.cli("run", "--log-driver", "none", "--name", "quiet", "busybox", "echo", "hi", check=True)
    assert r.stdout == "hi\n"
    qid = a.inspect("quiet")["Id"]
    assert _log_files(a, qid) == {}
    r = a.cli("logs", "quiet")
    assert r.returncode != 0 and "configured logging driver does not support reading" in r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--log-driver", "syslog"], 'logging driver "syslog" is not supported'),
    (["--log-opt", "max-size=lots"], "log opt max-size=lots: invalid size"),
    (["--log-opt", "max-size=0"], "max-size must be a positive number"),
    (["--log-opt", "max-size=1m", "--log-opt", "max-file=0"], "max-file cannot be less than 1"),
    (["--log-opt", "max-file=3"], "max-file=3 needs max-size"),
    (["--log-opt", "compress=true"], "compress cannot be true"),
    (["--log-opt", "max-size=1m", "--log-opt", "max-file=2", "--log-opt", "compress=maybe"], "compress=maybe"),
    (["--log-opt", "tag={{.Nmae}}"], "log opt tag={{.Nmae}}: no field Nmae"),
    (["--log-opt", "mode=non-blocking"], "unknown log opt 'mode' for json-file log driver (not supported by"),
    (["--log-driver", "local", "--log-opt", "env-regex=("], "log opt env-regex=(: not a regular expression"),
    (["--log-driver", "local", "--log-opt", "max-file=1"], "compression cannot be enabled when max file count is 1"),
    (["--log-driver", "none", "--log-opt", "max-size=1m"], "unknown log opt 'max-size' for none log driver"),
    (["--log-opt", "max-size"], "expected KEY=VALUE"),
])
def test_bad_log_options_are_refused_by_name(clean_agent: AgentProcess, args: list[str], message: str) -> None:
    before = clean_agent.cli("ps", "-aq", check=True).stdout
    r = clean_agent.cli("run", "--rm", *args, "busybox", "true")
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert clean_agent.cli("ps", "-aq", check=True).stdout == before   # nothing made


def test_hostile_settings_stay_bounded(clean_agent: AgentProcess) -> None:
    a = clean_agent
    # a huge max-file costs nothing per rotation (only existing files are renamed)
    cid = a.cli("run", "-d", "--log-opt", "max-size=2k", "--log-opt", "max-file=1000000", "busybox", "sh", "-c",
                _lines(400, 20), check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the writer to finish")
    assert len(_log_files(a, cid)) > 10
    nums = [int(line.split("-")[1]) for line in a.cli("logs", cid, check=True).stdout.splitlines()]
    assert nums == list(range(400))
    # one line longer than max-size: it goes to a file of its own, whole, and logs gives it back whole
    cid = a.cli("run", "-d", "--log-opt", "max-size=1k", "--log-opt", "max-file=2", "busybox", "sh", "-c",
                "echo before; head -c 5000 /dev/zero | tr '\\0' y; echo; echo after", check=True).stdout.strip()
    a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the writer to finish")
    out = a.cli("logs", cid, check=True).stdout
    assert out.endswith("y" * 5000 + "\nafter\n"), out[-80:]
    assert len(_log_files(a, cid)) == 2


def test_a_restart_appends_and_keeps_the_bound(clean_agent: AgentProcess) -> None:
    a = clean_agent
    cid = a.cli("create", "--log-opt", "max-size=3k", "--log-opt", "max-file=3", "busybox", "sh", "-c",
                "n=$(cat /runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > /runs; "
                "i=0; while [ $i -lt 60 ]; do echo run-$n-$i; i=$((i+1)); done",
                check=True).stdout.strip()
    for _ in range(3):
        a.cli("start", cid, check=True)
        a.wait_for(lambda: a.inspect(cid)["State"]["Status"] == "exited", 30, "the run to end")
    files = _log_files(a, cid)
    assert set(files) == {"container.log", "container.log.1", "container.log.2"}, files
    assert all(size <= 3000 for size in files.values()), files
    out = a.cli("logs", cid, check=True).stdout.splitlines()
    assert out[-1] == "run-3-59" and len(out) > 40
    # in order: each run's numbers rise, and a run never goes back to an earlier one's
    runs = [(int(line.split("-")[1]), int(line.split("-")[2])) for line in out]
    assert runs == sorted(runs)
