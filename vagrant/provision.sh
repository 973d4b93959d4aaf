#!/usr/bin/env bash
# vagrant/provision.sh NODE: run by `vagrant up` (or `vagrant provision`) in each guest, as root.
# Installs dockyard with deploy/install.sh, then starts this node's part of the cluster from the
# inventory the Vagrantfile passes in $DOCKYARD_INVENTORY: on the scheduler node the scheduler
# (its own etcd) and an agent, elsewhere an agent joined to it. The processes are started the way
# `dockyard cluster up` starts them (deploy/bootstrap.py: pid files and logs under
# /var/lib/dockyard/{run,log}), so `dockyard cluster status|down -i vagrant/hosts.yaml` on the host
# sees and stops them, and running this again leaves what runs alone.
set -euo pipefail
node=${1:?usage: provision.sh NODE}
project=/opt/dockyard
cd "$project"

install -d -m 0755 /etc/dockyard
printf '%s\n' "${DOCKYARD_INVENTORY:?the Vagrantfile passes the inventory}" > /etc/dockyard/hosts.yaml

# The private network is isolated: Python packages come from the wheelhouse fetch-wheels.sh made.
if [ -d "$project/vagrant/wheels" ] && ls "$project"/vagrant/wheels/*.whl >/dev/null 2>&1; then
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$project/vagrant/wheels"
fi
echo "provision $node: deploy/install.sh"
bash deploy/install.sh

echo "provision $node: starting its processes"
# Agents wait (up to 15 minutes, TCG is slow) for the scheduler node, which may still be booting.
.venv/bin/python -m deploy.bootstrap \
  "{\"op\": \"up-local\", \"inventory\": \"/etc/dockyard/hosts.yaml\", \"host\": \"$node\", \"timeout\": 900}"
