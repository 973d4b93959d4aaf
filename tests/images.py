"""Test helpers for images: the busybox base image, built once per session.

Use in a test module:
    from tests.images import busybox_tar_path, busybox_store  # noqa: F401  (pytest finds them by name)

``busybox_tar_path`` (session): path of a rootfs tar made by deploy/images/busybox.sh.
``busybox_store`` (function): (ImageStore in a tmp dir, the busybox:latest Image imported into it).
``busybox_tar(path)``: write the tar yourself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUSYBOX_SH = REPO / "deploy" / "images" / "busybox.sh"


def busybox_tar(path: Path) -> Path:
    """Write the busybox rootfs tar (deploy/images/busybox.sh -o PATH); skips if busybox-static is missing."""
    if not os.access("/bin/busybox", os.X_OK):
        pytest.skip("busybox-static is not installed (/bin/busybox)")
    subprocess.run(["sh", str(BUSYBOX_SH), "-o", str(path)], check=True)
    return Path(path)


@pytest.fixture(scope="session")
def busybox_tar_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_tar(tmp_path_factory.mktemp("busybox") / "busybox.tar")


@pytest.fixture
def busybox_store(tmp_path: Path, busybox_tar_path: Path) -> Iterator[tuple[object, object]]:
    from agent.images import ImageStore

    store = ImageStore(tmp_path / "images")
    with open(busybox_tar_path, "rb") as f:
        image = store.import_tar(f, "busybox:latest", changes=['CMD ["sh"]'])
    yield store, image
    with contextlib.suppress(OSError):
        shutil.rmtree(tmp_path / "images")
