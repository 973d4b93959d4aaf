"""References (docker's grammar and normalisation) and image config / --change, as tables."""

from __future__ import annotations

import pytest

from agent.images import ImageConfig, InvalidChange, InvalidReference, apply_changes, familiar, normalize
from agent.images.config import chain_id

D = "sha256:" + "a" * 64

REFERENCES = [
    # input, normalised, familiar
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("me/app:v1.2_rc-3", "docker.io/me/app:v1.2_rc-3", "me/app:v1.2_rc-3"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/ns/app:tag", "localhost:5000/ns/app:tag", "localhost:5000/ns/app:tag"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", "127.0.0.1:5000/app:latest"),
    ("ghcr.io/org/team/app:1", "ghcr.io/org/team/app:1", "ghcr.io/org/team/app:1"),
    ("registry.example.com:443/a/b/c/d", "registry.example.com:443/a/b/c/d:latest", "registry.example.com:443/a/b/c/d:latest"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
    (f"busybox:1@{D}", f"docker.io/library/busybox:1@{D}", f"busybox:1@{D}"),
    ("my-app.v2__x", "docker.io/library/my-app.v2__x:latest", "my-app.v2__x:latest"),
    ("Foo/bar", "Foo/bar:latest", "Foo/bar:latest"),  # an uppercase first component is a registry
]


@pytest.mark.parametrize(("ref", "full", "short"), REFERENCES)
def test_normalise(ref: str, full: str, short: str) -> None:
    assert normalize(ref) == full
    assert familiar(full) == short
    assert normalize(short) == full


BAD_REFERENCES = [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("busybox:", "bad tag"),
    ("busybox:-x", "bad tag"),
    ("busybox:" + "a" * 129, "bad tag"),
    ("bus..box", "bad repository"),
    ("-busybox", "bad repository"),
    ("busybox@sha256:abc", "bad digest"),
    ("busybox@sha256:" + "A" * 64, "64 lowercase"),
    ("a" * 64, "64-byte hexadecimal"),
    ("busy box", "whitespace"),
    ("localhost:5000/", "no repository|bad repository"),
    ("ex ample.com/x", "whitespace"),
    ("x" * 256, "longer than 255"),
]


@pytest.mark.parametrize(("ref", "message"), BAD_REFERENCES)
def test_bad_references(ref: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        normalize(ref)


CHANGES = [
    (['CMD ["sh", "-c", "echo hi"]'], {"cmd": ["sh", "-c", "echo hi"]}),
    (["CMD echo hi"], {"cmd": ["/bin/sh", "-c", "echo hi"]}),
    (['ENTRYPOINT ["/bin/httpd", "-f"]'], {"entrypoint": ["/bin/httpd", "-f"]}),
    (["ENTRYPOINT httpd -f"], {"entrypoint": ["/bin/sh", "-c", "httpd -f"]}),
    (['CMD ["-p", "80"]', 'ENTRYPOINT ["httpd"]'], {"cmd": ["-p", "80"], "entrypoint": ["httpd"]}),
    (["ENV A=1 B=\"two words\"", "ENV C ${A}-$B"], {"env": ["A=1", "B=two words", "C=1-two words"]}),
    (["ENV A=1", "ENV A=2"], {"env": ["A=2"]}),
    (["WORKDIR /app", "WORKDIR sub/../src"], {"workdir": "/app/src"}),
    (["USER nobody:nobody"], {"user": "nobody:nobody"}),
    (["EXPOSE 80 53/udp 8000-8010"], {"exposed_ports": ["53/udp", "80/tcp", "8000-8010/tcp"]}),
    (['LABEL a=b "c d"="e f"', "LABEL legacy value with spaces"], {"labels": {"a": "b", "c d": "e f", "legacy": "value with spaces"}}),
    (["STOPSIGNAL SIGTERM"], {"stop_signal": "SIGTERM"}),
    (["stopsignal 9"], {"stop_signal": "9"}),
]


@pytest.mark.parametrize(("changes", "want"), CHANGES)
def test_changes(changes: list[str], want: dict[str, object]) -> None:
    config = apply_changes(ImageConfig(), changes)
    for key, value in want.items():
        assert getattr(config, key) == value, key


def test_entrypoint_clears_inherited_cmd() -> None:
    base = ImageConfig(cmd=["sh"])
    assert apply_changes(base, ['ENTRYPOINT ["httpd"]']).cmd == []


BAD_CHANGES = [
    ("RUN echo hi", "not a valid change command"),
    ("FROM scratch", "not a valid change command"),
    ("EXPOSE 99999", "invalid port"),
    ("EXPOSE 80/foo", "invalid protocol"),
    ("ENV", "requires at least one argument"),
    ("ENV =x", "can not be blank"),
    ("ENV A", "needs a value"),
    ("USER a b", "exactly one"),
    ("", "empty"),
    ('LABEL a="unterminated', "No closing quotation"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CHANGES)
def test_bad_changes(change: str, message: str) -> None:
    with pytest.raises(InvalidChange, match=message):
        apply_changes(ImageConfig(), [change])


def test_oci_round_trip() -> None:
    config = ImageConfig(
        env=["PATH=/bin"], cmd=["sh"], entrypoint=["/init"], workdir="/w", user="1:1",
        exposed_ports=["80/tcp"], labels={"a": "b"}, stop_signal="SIGINT",
    )
    oci = config.to_oci()
    assert oci == {
        "Env": ["PATH=/bin"], "Cmd": ["sh"], "Entrypoint": ["/init"], "WorkingDir": "/w", "User": "1:1",
        "ExposedPorts": {"80/tcp": {}}, "Labels": {"a": "b"}, "StopSignal": "SIGINT",
    }
    assert ImageConfig.from_oci(oci) == config
    assert ImageConfig.from_oci(None) == ImageConfig()


def test_chain_id_follows_the_oci_spec() -> None:
    import hashlib

    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    assert chain_id([a]) == a
    assert chain_id([a, b]) == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_id([]) == ""
