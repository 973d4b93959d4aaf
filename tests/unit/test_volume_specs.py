"""docker's -v, --mount and --tmpfs spellings, and the agent's checks of them (pure: no root)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.model import InvalidArgument, Mount
from agent.volumes import specs


@pytest.mark.parametrize(("spec", "want"), [
    ("/data", Mount(type="volume", target="/data", anonymous=True)),
    ("pg:/var/lib/pg", Mount(type="volume", source="pg", target="/var/lib/pg")),
    ("pg:/var/lib/pg:ro,nocopy", Mount(type="volume", source="pg", target="/var/lib/pg", readonly=True, nocopy=True)),
    ("/srv:/srv", Mount(type="bind", source="/srv", target="/srv", create_source=True)),
    ("/srv:/srv:rw,Z,rprivate", Mount(type="bind", source="/srv", target="/srv", create_source=True, selinux="Z",
                                      propagation="rprivate")),
])
def test_volume_flag(spec: str, want: Mount) -> None:
    assert specs.parse_volume(spec) == replace(want, origin="-v", spec=spec)   # the spec, for inspect's Binds
    specs.check(specs.parse_volume(spec))


@pytest.mark.parametrize(("spec", "error"), [
    ("", "invalid volume specification"),
    ("a:b:c:d", "invalid volume specification"),
    ("/data:ro", "a mode needs SOURCE:TARGET:MODE"),
    ("./here:/x", "relative"),
    ("/a:/b:ro,rw", "ro and rw given twice"),
    ("/a:/b:bogus", "invalid mode 'bogus'"),
])
def test_volume_flag_refusals(spec: str, error: str) -> None:
    with pytest.raises(InvalidArgument, match=error):
        specs.parse_volume(spec)


@pytest.mark.parametrize(("m", "error"), [
    (Mount(type="volume", source="pg", target="data"), "not an absolute path"),
    (Mount(type="volume", source="pg", target="/"), "cannot be /"),
    (Mount(type="volume", source="pg", target="/a/../b"), "'..'"),
    (Mount(type="volume", source="p", target="/a"), "invalid volume name 'p'"),
    (Mount(type="volume", source="pg", target="/a", volume_driver="nfs"), "volume driver 'nfs' not found"),
    (Mount(type="bind", source="srv", target="/a"), "must be an absolute host path"),
    (Mount(type="bind", source="/srv", target="/a", propagation="sideways"), "invalid propagation"),
    (Mount(type="volume", source="pg", target="/a", propagation="private"), "bind mounts only"),
    (Mount(type="tmpfs", target="/t", tmpfs_options=["size=lots"]), "invalid size 'lots'"),
    (Mount(type="tmpfs", target="/t", tmpfs_options=["exotic"]), "unknown tmpfs option 'exotic'"),
    (Mount(type="tmpfs", target="/t", tmpfs_options=["mode=999"]), "not an octal file mode"),
    (Mount(type="nfs", target="/t"), "must be volume, bind or tmpfs"),
])
def test_check_refusals(m: Mount, error: str) -> None:
    with pytest.raises(InvalidArgument, match=error):
        specs.check(m)


def test_duplicate_targets_refused() -> None:
    with pytest.raises(InvalidArgument, match="duplicate mount point: /data"):
        specs.check_all([specs.parse_volume("a1:/data"), specs.parse_tmpfs("/data/")])


def test_mount_flag() -> None:
    m = specs.parse_mount("type=bind,src=/srv,dst=/srv,readonly,bind-propagation=private")
    assert m == Mount(type="bind", source="/srv", target="/srv", readonly=True, propagation="private",
                     origin="--mount")
    m = specs.parse_mount("source=pg,target=/d,volume-opt=type=tmpfs,volume-opt=device=tmpfs,volume-label=a=b,"
                          "volume-nocopy=true")
    assert (m.type, m.source, m.volume_options, m.volume_labels, m.nocopy) == \
        ("volume", "pg", {"type": "tmpfs", "device": "tmpfs"}, {"a": "b"}, True)
    assert specs.parse_mount("type=volume,dst=/x").anonymous
    m = specs.parse_mount("type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=1770")
    specs.check(m)
    assert m.tmpfs_options == ["noexec", "nosuid", "nodev", f"size={64 << 20}", "mode=1770"]
    for bad, error in [("type=nfs,dst=/x", "type must be"), ("type=bind,src=/a,dst=/b,volume-nocopy=1", "unexpected key"),
                       ("dst=/x,readonly=maybe", "true or false"), ("type=tmpfs,src=x,dst=/t", "no source"),
                       ("dst", "needs a value")]:
        with pytest.raises(InvalidArgument, match=error):
            specs.parse_mount(bad)


def test_tmpfs_flag_and_options_normalised() -> None:
    m = specs.parse_tmpfs("/run:size=64m,mode=1777,exec")
    specs.check(m)
    # docker's defaults, then the spec's; exec cancels the default noexec.
    assert m.tmpfs_options == ["nosuid", "nodev", f"size={64 << 20}", "mode=1777", "exec"]


def test_image_volume_and_healthcheck_instructions() -> None:
    from agent.images.config import ImageConfig, InvalidChange, apply_change

    c = apply_change(ImageConfig(), 'VOLUME ["/data", "/var/log/../lib"]')
    c = apply_change(c, "VOLUME /cache")
    assert c.volumes == ["/cache", "/data", "/var/lib"]
    c = apply_change(c, "HEALTHCHECK --interval=1m30s --timeout=500ms --retries=4 CMD curl -f http://localhost/")
    assert c.healthcheck == {"Interval": 90_000_000_000, "Timeout": 500_000_000, "Retries": 4,
                             "Test": ["CMD-SHELL", "curl -f http://localhost/"]}
    assert ImageConfig.from_oci(c.to_oci()) == c
    assert apply_change(c, "HEALTHCHECK NONE").healthcheck == {"Test": ["NONE"]}
    for bad, error in [("HEALTHCHECK --interval=soon CMD true", "invalid duration"), ("HEALTHCHECK true", "expected CMD"),
                       ("HEALTHCHECK NONE now", "takes no arguments"), ("VOLUME", "at least one argument")]:
        with pytest.raises(InvalidChange, match=error):
            apply_change(ImageConfig(), bad)


def test_health_check_merging_and_checks() -> None:
    from agent import health
    from agent.model import HealthCheck

    image = health.from_image({"Test": ["CMD", "true"], "Interval": 5_000_000_000, "Retries": 2})
    assert image == HealthCheck(test=["CMD", "true"], interval=5.0, timeout=30.0, retries=2)
    assert health.resolve(None, image) == image
    assert health.resolve(HealthCheck(test=["NONE"]), image) == HealthCheck(test=["NONE"])
    # what the CLI sends: 0 for a flag not given
    assert health.resolve(HealthCheck([], 1.0, 0, 0, 0, 0), image) == \
        HealthCheck(test=["CMD", "true"], interval=1.0, timeout=30.0, retries=2)
    assert health.resolve(HealthCheck(["CMD-SHELL", "x"], 0, 0, 0, 0, 0), None) == HealthCheck(test=["CMD-SHELL", "x"])
    assert health.resolve(HealthCheck([], 1.0, 0, 0, 0, 0), None) is None
    for bad, error in [(HealthCheck(test=["RUN", "x"]), "must start with CMD"), (HealthCheck(test=["CMD"]), "no command"),
                       (HealthCheck(test=["CMD", "x"], retries=-1), "negative")]:
        with pytest.raises(InvalidArgument, match=error):
            health.check(bad)


_MOUNTINFO = """\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 21 0:40 / /srv rw,relatime - tmpfs tmpfs rw
31 30 0:41 / /srv/shared rw,relatime shared:7 - tmpfs tmpfs rw
32 30 0:42 / /srv/slave rw,relatime master:7 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(("source", "propagation", "error"), [
    ("/srv/shared/a", "rshared", ""), ("/srv/shared", "slave", ""), ("/srv/slave/x", "rslave", ""),
    ("/srv/a", "rprivate", ""), ("/opt/a", "shared", ""),   # / is shared
    ("/srv/a", "rshared", "path /srv/a is mounted on /srv but it is not a shared mount"),
    ("/srv/slave/x", "shared", "mounted on /srv/slave but it is not a shared mount"),
    ("/srv/b", "rslave", "mounted on /srv but it is not a shared or slave mount"),
])
def test_shared_and_slave_need_a_shared_source_mount(tmp_path: Path, source: str, propagation: str,
                                                     error: str) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(_MOUNTINFO)
    m = Mount(type="bind", source=source, target="/x", propagation=propagation)
    if not error:
        specs.check_source_propagation(m, str(info))
        return
    with pytest.raises(InvalidArgument, match=error):
        specs.check_source_propagation(m, str(info))
