#!/usr/bin/env bash
# vagrant/fetch-wheels.sh: downloads dockyard's Python dependencies (and pip, setuptools, wheel)
# into vagrant/wheels, for guests on the isolated network (provision.sh installs from there).
# Run on this machine, which reaches PyPI; the guests run Debian 12's Python 3.11 on x86_64.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${PYTHON:-python3}
mkdir -p "$here/wheels"
# The requirements of pyproject.toml (dependencies + the test extra): the project itself is
# installed from its source in the guest (pip install -e), only its build backend comes from here.
mapfile -t reqs < <("$py" -c 'import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))' "$repo/pyproject.toml")
"$py" -m pip download --dest "$here/wheels" --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform linux_x86_64 --platform any --python-version 3.11 --implementation cp \
  pip 'setuptools>=68' wheel "${reqs[@]}"
echo "fetch-wheels: $(ls "$here/wheels" | wc -l) files in $here/wheels"
