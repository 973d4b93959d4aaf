"""daemon.json and the agent's engine flags, refused at start (before anything is made) with the key
and the file named, as dockerd refuses them: unknown keys, wrong types, bad values, a key given both
as a flag and in the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import engine
from common import settings
from deploy.cli import main


def _agent(tmp_path: Path, doc: object, *flags: str) -> tuple[int, str]:
    conf = tmp_path / "daemon.json"
    conf.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["agent", "--socket", str(tmp_path / "a.sock"), "--config-file", str(conf), *flags],
                           env={k: "" for k in ("DOCKYARD_AGENT_ROOT", "DOCKYARD_AGENT_LOG_DRIVER")})
    return r.exit_code, r.output


@pytest.mark.parametrize(("doc", "flags", "message"), [
    ({"data-root": "/x"}, ["--root", "/y"], "specified both as a flag and in the configuration file: data-root"),
    ({"data-root": "/x"}, ["--data-root", "/y"], "data-root: (from flag: /y, from file: /x)"),
    ({"log-driver": "local"}, ["--log-driver", "json-file"], "log-driver: (from flag: json-file, from file: local)"),
    ({"registry-mirrors": ["http://127.0.0.1:1"]}, ["--registry-mirror", "http://127.0.0.1:2"], "registry-mirrors"),
    ({"bip": "10.1.0.1/24"}, ["--subnet", "10.2.0.0/24"], "bip and --subnet: give one of them"),
    ({"storage-driver": "vfs"}, [], "don't match any configuration option: storage-driver (dockyard always"),
    ({"registry-mirror": ["x"]}, [], "don't match any configuration option: registry-mirror"),
    ([], [], "must be a JSON object"),
    ({"registry-mirrors": "http://127.0.0.1:1"}, [], "registry-mirrors: must be a list of strings"),
    ({"registry-mirrors": ["127.0.0.1:5000"]}, [], "registry-mirrors: invalid mirror"),
    ({"registry-mirrors": ["https://m.example/v2/"]}, [], "give only scheme, host and port"),
    ({"insecure-registries": ["http://r:5000"]}, [], "insecure-registries: insecure registry 'http://r:5000' should"),
    ({"insecure-registries": ["r:99999"]}, [], "not a host[:port] or a CIDR"),
    ({"data-root": 5}, [], "data-root: must be a string, not a number"),
    ({"log-driver": "syslog"}, [], 'log-driver: logging driver "syslog" is not supported'),
    ({"log-opts": {"max-size": "huge"}}, [], "log-opts: log opt max-size=huge: invalid size"),
    ({"log-opts": {"max-size": 10}}, [], "log-opts: must be an object of strings"),
    ({"log-driver": "none", "log-opts": {"max-size": "1m"}}, [], "unknown log opt 'max-size' for none log driver"),
    ({"default-ulimits": {"nofile": {"Soft": 1}}}, [], "default-ulimits: nofile: must be an object with Soft"),
    ({"default-ulimits": {"bogus": {"Soft": 1, "Hard": 1}}}, [], "default-ulimits: bogus: unknown limit"),
    ({"default-ulimits": {"nofile": {"Name": "nproc", "Soft": 1, "Hard": 1}}}, [], "its Name is 'nproc'"),
    ({"dns": ["dns.example"]}, [], "dns: 'dns.example' is not an IP address"),
    ({"dns-search": ["bad domain"]}, [], "dns-search: 'bad domain' is not a valid domain"),
    ({"dns-opts": ["a b"]}, [], "dns-opts: 'a b' is not a resolv.conf option"),
    ({"dns-search": ["a.example"]}, ["--dns-search", "b.example"], "dns-search: (from flag: b.example, from file: a.example)"),
    ({"bip": "172.29.0.9/16"}, [], "bip: '172.29.0.9/16': the bridge takes its subnet's first address"),
    ({"bip": "172.29.0.1"}, [], "a prefix of /30 or shorter"),
])
def test_bad_daemon_json_is_refused_at_start(tmp_path: Path, doc: object, flags: list[str], message: str) -> None:
    code, out = _agent(tmp_path, doc, *flags)
    assert code == 2 and message in " ".join(out.split()), out
    assert str(tmp_path / "daemon.json") in " ".join(out.split())   # names the file
    assert not (tmp_path / "a.sock").exists()


def test_a_missing_config_file_is_an_error_and_flags_are_checked_alike(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["agent", "--config-file", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "nope.json: No such file or directory" in r.output
    r = CliRunner().invoke(main, ["agent", "--registry-mirror", "ftp://m", "--config-file", ""])
    assert r.exit_code == 2 and "--registry-mirror: invalid mirror 'ftp://m'" in r.output
    r = CliRunner().invoke(main, ["agent", "--log-opt", "max-file=2", "--config-file", ""])
    assert r.exit_code == 2 and "--log-opt: log opt max-file=2 needs max-size" in r.output


def test_load_daemon_json_gives_each_key_as_its_flag_would(tmp_path: Path) -> None:
    conf = tmp_path / "daemon.json"
    conf.write_text(json.dumps({"registry-mirrors": ["https://m.example"], "log-opts": {"max-size": "10m"},
                                "default-ulimits": {"nofile": {"Name": "nofile", "Soft": 1, "Hard": 2}},
                                "data-root": "/srv/dockyard", "dns": ["192.0.2.1"]}))
    assert settings.load_daemon_json(str(conf)) == {
        "registry_mirrors": ("https://m.example",), "log_opts": ("max-size=10m",),
        "default_ulimits": ("nofile=1:2",), "root": "/srv/dockyard", "dns": ("192.0.2.1",)}


def test_engine_settings_and_insecure_matching() -> None:
    s = engine.settings({"registry_mirrors": ("http://127.0.0.1:5000/",), "insecure_registries": ("10.0.0.0/8",
                         "reg.example:5000"), "log_driver": "local", "log_opts": ("max-file=3",),
                         "default_ulimits": ("nofile=10:20",), "dns": ("192.0.2.1",)}, lambda p: p)
    assert s.registries.mirrors == ("http://127.0.0.1:5000",)
    assert s.registries.is_insecure("10.1.2.3:5000") and s.registries.is_insecure("reg.example:5000")
    assert not s.registries.is_insecure("reg.example:443") and not s.registries.is_insecure("192.0.2.9")
    assert s.log.type == "local" and s.log.config == {"max-file": "3"}
    assert [(u.name, u.soft, u.hard) for u in s.ulimits] == [("nofile", 10, 20)]
    assert engine.bridge_subnet("10.5.0.1/16") == "10.5.0.0/16"
