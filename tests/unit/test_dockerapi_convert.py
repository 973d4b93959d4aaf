"""The Docker API's pure parts: the create body -> ContainerConfig mapping (and its refusals),
inspect's echo, API versions on paths, query booleans and filters, stream framing, detach keys."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest

from agent.dockerapi import convert
from agent.dockerapi.http import HTTPError, Json, Request
from agent.dockerapi.router import Router
from agent.dockerapi.streams import DetachScanner, mux, parse_detach_keys
from agent.dockerapi.system import parse_filters
from agent.model import Container

# What the docker CLI 28.2 sends for `docker run -d -p 8080:80 -e A=1 -m 64m --restart on-failure:3 busybox sh`
CLI_BODY: dict[str, Any] = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
    "AttachStderr": False, "ExposedPorts": {"80/tcp": {}}, "Tty": False, "OpenStdin": False, "StdinOnce": False,
    "Env": ["A=1"], "Cmd": ["sh"], "Image": "busybox", "Volumes": {}, "WorkingDir": "", "Entrypoint": None,
    "OnBuild": None, "Labels": {},
    "HostConfig": {
        "Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}}, "NetworkMode": "default",
        "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
        "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}, "AutoRemove": False,
        "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [24, 80], "CapAdd": None, "CapDrop": None,
        "CgroupnsMode": "", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None, "GroupAdd": None,
        "IpcMode": "", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "", "Privileged": False,
        "PublishAllPorts": False, "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "", "UsernsMode": "",
        "ShmSize": 0, "Isolation": "", "CpuShares": 0, "Memory": 67108864, "NanoCpus": 0, "CgroupParent": "",
        "BlkioWeight": 0, "BlkioWeightDevice": [], "BlkioDeviceReadBps": [], "BlkioDeviceWriteBps": [],
        "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [], "CpuPeriod": 0, "CpuQuota": 0,
        "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "", "Devices": [],
        "DeviceCgroupRules": None, "DeviceRequests": None, "MemoryReservation": 0, "MemorySwap": 0,
        "MemorySwappiness": -1, "OomKillDisable": False, "PidsLimit": 0, "Ulimits": [], "CpuCount": 0,
        "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "MaskedPaths": None, "ReadonlyPaths": None,
    },
    "NetworkingConfig": {"EndpointsConfig": {"default": {"IPAMConfig": None, "Links": None, "Aliases": None,
                                                          "MacAddress": "", "DriverOpts": None, "NetworkID": "",
                                                          "EndpointID": "", "Gateway": "", "IPAddress": "",
                                                          "IPPrefixLen": 0, "DNSNames": None}}},
}


def test_the_clis_create_body_maps_onto_dockyard() -> None:
    cfg, console = convert.config_from_docker(CLI_BODY, "web")
    assert (cfg.name, cfg.image, cfg.cmd, cfg.env, cfg.network_mode) == ("web", "busybox", ["sh"], ["A=1"], "bridge")
    assert [(p.host_port, p.container_port, p.protocol) for p in cfg.ports] == [(8080, 80, "tcp")]
    assert cfg.resources.memory == 64 << 20 and cfg.restart_policy.name == "on-failure"
    assert cfg.restart_policy.max_retries == 3 and cfg.exposed_ports == ["80/tcp"] and console == (24, 80)
    assert not cfg.entrypoint_set


@pytest.mark.parametrize("path,value,message", [
    (("HostConfig", "Binds"), ["/a:/b:zz"], "invalid mode 'zz'"),
    (("HostConfig", "Binds"), "/a:/b", "HostConfig.Binds must be a list"),
    (("HostConfig", "Mounts"), [{"Type": "npipe", "Target": "/x"}], "HostConfig.Mounts[0].Type 'npipe'"),
    (("HostConfig", "Mounts"), [{"Type": "bind", "Source": "/a", "Target": "/b", "TmpfsOptions": {"SizeBytes": 1}}],
     "HostConfig.Mounts[0].TmpfsOptions does not apply to a bind mount"),
    (("HostConfig", "Mounts"), [{"Type": "volume", "Target": "/b", "VolumeOptions": {"Subpath": "x"}}],
     "HostConfig.Mounts[0].VolumeOptions.Subpath is not supported"),
    (("HostConfig", "Tmpfs"), {"/x": 3}, "HostConfig.Tmpfs must be an object of path: options strings"),
    (("HostConfig", "Ulimits"), [{"Soft": 1}], "HostConfig.Ulimits: each entry needs Name"),
    (("HostConfig", "GroupAdd"), [True], "HostConfig.GroupAdd must be a list"),
    (("HostConfig", "VolumeDriver"), "flocker", "HostConfig.VolumeDriver 'flocker'"),
    (("HostConfig", "MemorySwappiness"), "40", "HostConfig.MemorySwappiness must be an integer"),
    (("HostConfig", "LogConfig"), {"Type": "syslog"}, "logger: no log driver named 'syslog' is registered"),
    (("HostConfig", "LogConfig"), {"Type": "json-file", "Config": {"mode": "non-blocking"}},
     "unknown log opt 'mode' for json-file log driver"),
    (("HostConfig", "LogConfig"), {"Type": "json-file", "Config": {"max-file": "0"}}, "log opt max-file=0: max-file cannot be less than 1"),
    (("HostConfig", "LogConfig"), {"Type": "json-file", "Config": {"max-size": "big"}}, "log opt max-size=big"),
    (("HostConfig", "CgroupnsMode"), ["private"], "HostConfig.CgroupnsMode must be a string"),
    (("HostConfig", "DeviceCgroupRules"), "c 1:3 rwm", "HostConfig.DeviceCgroupRules must be a list"),
    (("Volumes",), ["/data"], "Config.Volumes must be an object"),
    (("MacAddress",), "02:42:ac:11:00:0a", "Config.MacAddress"),
    (("NetworkingConfig", "EndpointsConfig"), {"host": {}}, "EndpointsConfig.host: a further network must be a user-defined"),
    (("NetworkingConfig", "EndpointsConfig"), {"default": {"IPAMConfig": {"IPv6Address": "fd00::5"}}},
     "EndpointsConfig.default.IPAMConfig.IPv6Address is not supported"),
    (("HostConfig", "Memory"), "64m", "HostConfig.Memory must be an integer"),
    (("Healthcheck",), {"Test": ["WHAT"]}, "Config.Healthcheck.Test"),
])
def test_what_dockyard_cannot_do_is_refused_by_name(path: tuple[str, ...], value: Any, message: str) -> None:
    body = json.loads(json.dumps(CLI_BODY))
    target = body
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    with pytest.raises(HTTPError) as e:
        convert.config_from_docker(body, "")
    assert e.value.status == 400 and message in e.value.message


def test_entrypoint_reset_and_healthcheck() -> None:
    body = {"Image": "busybox", "Entrypoint": [""], "Cmd": "echo hi",
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000, "Retries": 2}}
    cfg, _ = convert.config_from_docker(body, "")
    assert cfg.entrypoint_set and cfg.entrypoint == [] and cfg.cmd == ["echo", "hi"]
    assert cfg.healthcheck is not None and cfg.healthcheck.interval == 2.0 and cfg.healthcheck.retries == 2
    assert convert.health_json(cfg.healthcheck)["Interval"] == 2_000_000_000


def test_inspect_echoes_the_create() -> None:
    cfg, _ = convert.config_from_docker(CLI_BODY, "web")
    c = Container(id="a" * 64, name="web", created=1.0, config=cfg, image_id="sha256:" + "b" * 64,
                  image_ref="busybox", snapshot="a" * 64, args=["sh"])
    doc = convert.inspect(c, "/log", None)
    hc = doc["HostConfig"]
    assert hc["Memory"] == 64 << 20 and hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert hc["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert hc["LogConfig"]["Type"] == "json-file" and doc["Name"] == "/web" and doc["Config"]["Env"] == ["A=1"]
    assert doc["Config"]["ExposedPorts"] == {"80/tcp": {}} and doc["State"]["Status"] == "created"
    row = convert.summary(c)
    assert row["Names"] == ["/web"] and row["Status"] == "Created" and row["Ports"] == [{"PrivatePort": 80,
                                                                                          "Type": "tcp"}]


def test_mounts_and_the_rest_of_hostconfig_map_and_are_echoed_as_given() -> None:
    body = json.loads(json.dumps(CLI_BODY))
    body["Volumes"] = {"/anon": {}, "/mnt": {}}
    body["HostConfig"].update({
        "Binds": ["/srv/a:/mnt:ro", "data:/data"],
        "Mounts": [{"Type": "volume", "Source": "v1", "Target": "/v1", "VolumeOptions": {"Labels": {"k": "x"}}},
                   {"Type": "tmpfs", "Target": "/t2", "TmpfsOptions": {"SizeBytes": 1 << 20, "Mode": 0o700}}],
        "Tmpfs": {"/tmp1": "size=3M"}, "ReadonlyRootfs": True, "CapAdd": ["NET_ADMIN"], "CapDrop": ["MKNOD"],
        "Ulimits": [{"Name": "nofile", "Soft": 100, "Hard": 200}], "Dns": ["10.0.0.1"], "DnsSearch": ["ex.org"],
        "DnsOptions": ["ndots:2"], "ExtraHosts": ["db:10.0.0.2"], "Sysctls": {"net.core.somaxconn": "1024"},
        "ShmSize": 1 << 20, "GroupAdd": [1000, "wheel"], "VolumesFrom": ["other:ro"],
        "LogConfig": {"Type": "", "Config": {"max-file": "100", "max-size": "10m"}},
    })
    cfg, _ = convert.config_from_docker(body, "web")
    got = [(m.type, m.source, m.target, m.readonly, m.anonymous, m.origin) for m in cfg.mounts]
    assert got == [("bind", "/srv/a", "/mnt", True, False, "-v"), ("volume", "data", "/data", False, False, "-v"),
                   ("volume", "v1", "/v1", False, False, "--mount"), ("tmpfs", "", "/t2", False, False, "--mount"),
                   ("tmpfs", "", "/tmp1", False, False, "--tmpfs"), ("volume", "", "/anon", False, True, "")]
    assert cfg.mounts[2].volume_labels == {"k": "x"} and "size=1048576" in cfg.mounts[3].tmpfs_options
    assert "mode=700" in cfg.mounts[3].tmpfs_options
    assert cfg.read_only and cfg.cap_add == ["NET_ADMIN"] and cfg.cap_drop == ["MKNOD"]
    assert [(u.name, u.soft, u.hard) for u in cfg.ulimits] == [("nofile", 100, 200)]
    assert (cfg.dns, cfg.dns_search, cfg.dns_options, cfg.extra_hosts) == (["10.0.0.1"], ["ex.org"], ["ndots:2"],
                                                                            ["db:10.0.0.2"])
    assert cfg.sysctls == {"net.core.somaxconn": "1024"} and cfg.shm_size == 1 << 20
    assert cfg.group_add == ["1000", "wheel"] and cfg.volumes_from == ["other:ro"]
    assert (cfg.log_config.type, cfg.log_config.config) == ("", {"max-file": "100", "max-size": "10m"})
    c = Container(id="a" * 64, name="web", created=1.0, config=cfg, image_id="sha256:" + "b" * 64,
                  image_ref="busybox", snapshot="a" * 64, args=["sh"])
    hc = convert.inspect(c, "/log", None)["HostConfig"]
    assert hc["Binds"] == ["/srv/a:/mnt:ro", "data:/data"] and hc["Tmpfs"] == {"/tmp1": "size=3M"}
    assert hc["Mounts"][0] == {"Type": "volume", "Source": "v1", "Target": "/v1", "ReadOnly": False,
                               "VolumeOptions": {"NoCopy": False, "Labels": {"k": "x"},
                                                 "DriverConfig": {"Name": "local", "Options": None}}}
    assert hc["Mounts"][1]["TmpfsOptions"] == {"SizeBytes": 1 << 20, "Mode": 0o700}
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "100", "max-size": "10m"}}
    assert hc["ReadonlyRootfs"] and hc["CapAdd"] == ["NET_ADMIN"] and hc["ShmSize"] == 1 << 20
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 100, "Hard": 200}] and hc["VolumesFrom"] == ["other:ro"]
    assert hc["GroupAdd"] == ["1000", "wheel"] and hc["Sysctls"] == {"net.core.somaxconn": "1024"}


def _request(path: str) -> Request:
    async def no_body() -> Any:
        if False:
            yield b""

    return Request("GET", path, [], no_body)


def test_versions_on_paths() -> None:
    r = Router()

    async def version(req: Request) -> Json:
        return Json(200, {"v": req.version, "p": req.path})

    r.add("GET", "/version", version)
    got = asyncio.run(r(_request("/v1.41/version")))
    assert isinstance(got, Json) and got.value == {"v": "1.41", "p": "/version"}
    got = asyncio.run(r(_request("/version")))
    assert isinstance(got, Json) and got.value["v"] == "1.45"
    with pytest.raises(HTTPError) as e:
        asyncio.run(r(_request("/v1.46/version")))
    assert e.value.status == 400 and "too new. Maximum supported API version is 1.45" in e.value.message
    with pytest.raises(HTTPError) as e:
        asyncio.run(r(_request("/v1.23/version")))
    assert "too old" in e.value.message
    with pytest.raises(HTTPError) as e:
        asyncio.run(r(_request("/nope")))
    assert e.value.status == 404


def test_query_booleans_and_both_filter_forms() -> None:
    req = _request('/x?all=True&force=False&v=0&stream=1&filters={"label":{"a=b":true},"status":["exited"]}')
    assert req.flag("all") and req.flag("stream") and not req.flag("force") and not req.flag("v")
    assert parse_filters(req) == {"label": ["a=b"], "status": ["exited"]}
    with pytest.raises(HTTPError):
        parse_filters(_request("/x?filters=notjson"))


def test_framing_and_detach_keys() -> None:
    assert mux(1, b"hi") == struct.pack(">BxxxI", 1, 2) + b"hi"
    keys = parse_detach_keys("ctrl-p,ctrl-q")
    assert keys == b"\x10\x11"
    s = DetachScanner(keys)
    assert s.feed(b"ab\x10") == (b"ab", False)          # a partial match is held back
    assert s.feed(b"c") == (b"\x10c", False)            # ... and let go when it does not go on
    assert s.feed(b"x\x10\x11rest") == (b"x", True)
    with pytest.raises(HTTPError):
        parse_detach_keys("ctrl-1")


def test_archive_paths_below_a_mount_go_to_its_directory(tmp_path: Any) -> None:
    from agent.dockerapi.archive import in_mount

    vol, deep = tmp_path / "vol", tmp_path / "deep"
    vol.mkdir()
    deep.mkdir()
    mounts = [("/vol1", str(vol)), ("/vol1/deeper", str(deep))]
    assert in_mount(mounts, "/vol1/data.txt") == (str(vol), "/data.txt")
    assert in_mount(mounts, "/vol1") == (str(vol), "/")
    assert in_mount(mounts, "/vol1/") == (str(vol), "/.")
    assert in_mount(mounts, "/vol1/deeper/x/") == (str(deep), "/x/")
    assert in_mount(mounts, "/vol10/x") is None                      # a prefix of the name is not below it
    assert in_mount(mounts, "/vol1/../etc/passwd") is None           # '..' leaves the mount: the rootfs
    assert in_mount([("/f", str(tmp_path / "nofile"))], "/f") is None   # a bind of a file: the rootfs's rules
