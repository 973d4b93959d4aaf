"""`python -m agent.runtime.monitor`: build the monitor (deploy/install.sh runs this)."""

from agent.runtime.monitor import BINARY, build

build()
print(BINARY)
