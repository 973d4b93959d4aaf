"""`python -m deploy.launcher PATH`: write the `dockyard` command, a launcher that starts this
interpreter with -I -S and calls deploy.entry.main() (deploy/install.sh links it into /usr/local/bin).

pip's console script for `dockyard` imports site, which reads the venv's .pth files and installs
the editable-install finder: ~20 ms of a command's start here, as much as the interpreter itself.
The launcher names the directories site would have put on sys.path instead: the repository and
this interpreter's site-packages. -I also keeps PYTHON* variables and the user's site out.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def script() -> str:
    paths = [str(REPO), *site.getsitepackages()]
    return (f"#!{sys.executable} -IS\n"
            "# Written by deploy/launcher.py: `dockyard` without site's start-up cost.\n"
            "import sys\n"
            f"sys.path[0:0] = {paths!r}\n"
            "from deploy.entry import main\n"
            "sys.exit(main())\n")


def write(path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(script())
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m deploy.launcher PATH")
    write(sys.argv[1])
