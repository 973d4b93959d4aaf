#!/usr/bin/env bash
# Installs everything dockyard needs on a Debian 12 host, as root: system packages, a private
# CRIU 4 (Debian 12's 3.17 fails on new kernels, see deploy/install-criu.sh), and a Python
# virtualenv in .venv with dockyard installed in it. Safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

export DEBIAN_FRONTEND=noninteractive
pkgs=(
  python3 python3-venv python3-dev gcc libc6-dev zlib1g-dev make git   # the agent, its C monitor (zlib: compressed logs), the scheduler
  iproute2 iptables procps util-linux kmod              # namespaces, bridge, veth, port publishing
  libseccomp2                                           # the containers' seccomp filter (pyseccomp)
  busybox-static                                        # the base image (deploy/images/busybox.sh)
  etcd-server etcd-client                               # the scheduler's state
  prometheus                                            # promtool and the monitoring tests
  docker-registry skopeo umoci                          # registry and image-format peers
  runc crun docker.io                                   # baselines for the benchmarks
  docker-compose                                        # a Docker API client the tests drive (compose 1.29)
  iperf3                                                # the overlay network bench (tests/bench/bench_network.py)
  openssh-server openssh-client                         # cluster bootstrap over SSH
  vagrant vagrant-libvirt                               # vagrant/ (validated offline by the tests)
  zstd curl ca-certificates
)
# The VM tests (tests/vm): qemu's emulator and what vagrant/build-box.sh builds the guests' box with;
# libvirt for vagrant-libvirt, without libvirt-daemon-system (it adds a NAT network; FACTS.md).
# Apart from pkgs, which build-box.sh reads as the guests' own list.
vm_pkgs=(qemu-system-x86 qemu-utils debootstrap fdisk e2fsprogs
         libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base)
missing=()
for p in "${pkgs[@]}" "${vm_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# libvirtd's qemu driver refuses to start without its user, even when qemu.conf runs qemu as root
# (tests/vm_libvirt.py does); libvirt-daemon-system would make it.
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

bash deploy/install-criu.sh || echo "install: CRIU could not be installed; live migration will be unavailable" >&2

# A virtualenv keeps us clear of Debian's externally-managed system Python (PEP 668).
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
.venv/bin/python -m agent.runtime.monitor >/dev/null   # the C container monitor (agent/runtime/monitor)
# The command: a launcher that skips site's start-up (deploy/launcher.py), not pip's console script.
.venv/bin/python -m deploy.launcher "$here/.venv/bin/dockyard-launcher"
ln -sf "$here/.venv/bin/dockyard-launcher" /usr/local/bin/dockyard
echo "install: done ($(.venv/bin/dockyard --version 2>/dev/null || echo dockyard))"
