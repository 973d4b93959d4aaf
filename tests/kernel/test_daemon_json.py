"""docker's daemon.json for the agent (--config-file): a loopback registry as the mirror of docker.io
names (the next mirror asked when one lacks the image), data-root, default ulimits, log driver and
options, DNS, all shown by `dockyard info` and applied to containers. (Bad files and conflicts with
flags: tests/unit/test_daemon_json_refusals.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess, import_busybox
from tests.kernel.test_images_registry import Registry

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.peer]


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[tuple[Registry, Registry]]:
    empty, full = Registry(tmp_path / "empty"), Registry(tmp_path / "full")
    try:
        empty.start()
        full.start()
        yield empty, full
    finally:
        empty.stop()
        full.stop()


def test_daemon_json_mirrors_root_ulimits_logs_dns(tmp_path: Path, busybox_tar_path: Path,
                                                    registries: tuple[Registry, Registry]) -> None:
    empty, full = registries
    a = AgentProcess(tmp_path / "agent")
    conf = tmp_path / "daemon.json"
    conf.write_text(json.dumps({
        "data-root": str(a.root),
        # the first mirror lacks the image: the pull goes on to the next (Docker Hub is never asked)
        "registry-mirrors": [f"http://{empty.host}", f"http://{full.host}/"],
        "insecure-registries": ["10.99.0.0/16"],
        "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1234, "Hard": 2345}},
        "log-driver": "json-file", "log-opts": {"max-size": "2k", "max-file": "2"},
        "dns": ["192.0.2.53"], "dns-search": ["corp.example"], "dns-opts": ["ndots:3"],
    }))
    a.root_flag = False
    a.extra_args = ["--config-file", str(conf)]
    try:
        a.start()
        import_busybox(a, busybox_tar_path)
        # the mirror gets busybox as docker.io's library/busybox
        a.cli("tag", "busybox:latest", f"{full.host}/library/busybox:mirrored", check=True)
        a.cli("push", f"{full.host}/library/busybox:mirrored", check=True)
        a.cli("rmi", f"{full.host}/library/busybox:mirrored", "busybox:latest", check=True)
        assert a.cli("images", "-q", check=True).stdout == ""   # so the pull must fetch every layer
        info = a.cli("info", check=True).stdout
        assert f"Config File: {conf}" in info
        assert f"Registry Mirrors: http://{empty.host} http://{full.host}" in info
        assert "Insecure Registries: 10.99.0.0/16" in info
        assert "Logging Driver: json-file max-file=2 max-size=2k" in info
        assert "Default Ulimits: nofile=1234:2345" in info and "DNS: 192.0.2.53" in info
        assert "DNS Search: corp.example" in info and "DNS Options: ndots:3" in info
        assert f"Docker Root Dir: {a.root}" in info
        assert (a.root / "containers").is_dir()   # data-root is where the state went
        r = a.cli("pull", "busybox:mirrored", check=True)
        assert "Pull complete" in r.stdout and "Downloaded newer image for busybox:mirrored" in r.stdout
        assert [ln.split()[:2] for ln in a.cli("images", check=True).stdout.splitlines()[1:]] == [
            ["busybox", "mirrored"]]
        # the run gets the defaults: ulimit, DNS, rotation at 2k x 2 files
        out = a.cli("run", "--name", "defaults", "busybox:mirrored", "sh", "-c",
                    "grep 'open files' /proc/self/limits; cat /etc/resolv.conf; "
                    "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done", check=True).stdout
        assert "1234" in out and "2345" in out and "nameserver 192.0.2.53" in out
        assert "search corp.example" in out and "options ndots:3" in out
        cid = a.inspect("defaults")["Id"]
        files = sorted(p.name for p in (a.root / "containers" / cid).glob("container.log*"))
        assert files == ["container.log", "container.log.1"]
        assert a.cli("logs", "--tail", "1", "defaults", check=True).stdout == "line-299\n"
        # the container's own options win over the defaults, key by key (docker's merge)
        out = a.cli("run", "--name", "own", "--ulimit", "nofile=99:99", "--dns", "192.0.2.1", "--log-opt",
                    "max-file=1", "busybox:mirrored", "sh", "-c",
                    "grep 'open files' /proc/self/limits; cat /etc/resolv.conf", check=True).stdout
        assert "1234" not in out and " 99 " in out and "192.0.2.1" in out and "192.0.2.53" not in out
        own = a.inspect("own")
        assert own["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "1", "max-size": "2k"}}
    finally:
        a.destroy()
