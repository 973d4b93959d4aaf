"""Test helpers for images: the busybox base image, built once per session.

Use in a test module:
    from tests.images import busybox_tar_path, busybox_store  # noqa: F401  (pytest finds them by name)

``busybox_tar_path`` (session): path of a rootfs tar made by deploy/images/busybox.sh.
``busybox_store`` (function): (ImageStore in a tmp dir, the busybox:latest Image imported into it).
``busybox_tar(path)``: write the tar yourself.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def make_tar(*entries: tuple[Any, ...]) -> bytes:
    """("file", name, data[, mode]), ("dir", name[, mode]), ("sym", name, target), ("link", name, target),
    ("chr"|"blk", name, major, minor), ("fifo", name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            data = None
            if kind == "file":
                data = rest[0]
                info.size = len(data)
                info.mode = rest[1] if len(rest) > 1 else 0o644
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = rest[0] if rest else 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind in ("chr", "blk"):
                info.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                info.devmajor, info.devminor = rest
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()
