"""The real peer: a dockerd started by hand (FACTS.md) loads what `dockyard save` writes, and
`dockyard load` takes what `docker save` writes; both images then run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not shutil.which("dockerd") or not shutil.which("docker"):
        pytest.skip("Debian's docker.io is not installed")
    from tests.bench.common import Dockerd

    d = Dockerd(tmp_path_factory.mktemp("dockerd"))
    try:
        d.start()
    except RuntimeError as e:
        d.stop()
        pytest.skip(f"dockerd cannot run here: {e}")
    yield d
    d.stop()


def test_docker_loads_our_save_and_we_load_docker_save(dockerd: object, clean_agent: AgentProcess,
                                                       tmp_path: Path, busybox_tar_path: Path) -> None:
    from tests.bench.common import Dockerd

    assert isinstance(dockerd, Dockerd)
    a = clean_agent
    # ours -> docker
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text('FROM busybox\nRUN echo built-by-dockyard > /hello\nCMD ["cat", "/hello"]\n')
    a.cli("build", "-t", "peer-ours:1", str(tmp_path / "ctx"), check=True)
    ours = tmp_path / "ours.tar"
    a.cli("save", "-o", str(ours), "peer-ours:1", check=True)
    out = dockerd.cli("load", "-i", str(ours))
    assert "peer-ours:1" in out
    assert dockerd.cli("run", "--rm", "--network", "none", "peer-ours:1").strip() == "built-by-dockyard"
    # docker -> ours
    dockerd.cli("import", str(busybox_tar_path), "peer-base:1")
    (tmp_path / "dctx").mkdir()
    (tmp_path / "dctx" / "Dockerfile").write_text('FROM peer-base:1\nRUN echo built-by-docker > /hello\nCMD ["cat", "/hello"]\n')
    dockerd.cli("build", "--network", "none", "-t", "peer-theirs:1", str(tmp_path / "dctx"))
    theirs = tmp_path / "theirs.tar"
    dockerd.cli("save", "-o", str(theirs), "peer-theirs:1")
    r = a.cli("load", "-i", str(theirs))
    assert r.returncode == 0 and "peer-theirs:1" in r.stdout + r.stderr, r.stderr
    r = a.cli("run", "--rm", "peer-theirs:1")
    assert (r.returncode, r.stdout) == (0, "built-by-docker\n"), r.stderr
    a.cli("rmi", "peer-theirs:1", "peer-ours:1")
