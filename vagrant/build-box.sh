#!/usr/bin/env bash
# vagrant/build-box.sh [BOX_FILE]: builds the Debian 12 (bookworm) libvirt box the Vagrantfile uses,
# locally with debootstrap, as root (about 3-5 minutes and 2 GB of scratch space; see FACTS.md).
#
#   sudo vagrant/build-box.sh                   -> vagrant/dockyard-debian12.box
#   vagrant box add --name dockyard/debian12 vagrant/dockyard-debian12.box
#
# The guest: minbase + systemd, sshd, sudo, python3, a kernel, CRIU (3.17 works on its 6.1 kernel),
# and every Debian package deploy/install.sh wants (read from it), because the VMs' private
# network is isolated and the guests cannot fetch anything. A `vagrant` user with passwordless sudo
# and Vagrant's insecure key (replaced by a key per VM at the first `vagrant up`), systemd-networkd
# DHCP on every NIC, host keys made at first boot, grub on a 4 GiB disk, qcow2-compressed.
#
# Environment: MIRROR (default: the Debian mirror apt uses here), SIZE (default 4G),
# WORK (scratch directory, default a new one under /var/tmp), KEEP=1 keeps it.
# For plain qemu (tests/vm_harness.py builds its box this way):
#   PACKAGES=a,b,c   the extra Debian packages instead of deploy/install.sh's whole list
#   WHEELS=DIR       a virtualenv at /opt/dockyard/.venv with the project's dependencies from the
#                    wheels in DIR (offline), so `dockyard cluster up --no-install` needs no network
#   UNMANAGED=NAMES  NICs systemd-networkd leaves alone (a test gives them static addresses)
#   CRIU_PREFIX=DIR  copy this machine's private CRIU (deploy/install-criu.sh's /opt/dockyard/criu,
#                    self-contained) to the same place in the guest: dockyard wants criu >= 4 and
#                    the offline guest cannot fetch one (Debian 12 ships 3.17)
#   DEBS=DIR         keep the downloaded .debs there (debootstrap --cache-dir) for the next build
#   IMAGE=FILE       write the qcow2 disk to FILE instead of a Vagrant box
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$(realpath -m "${1:-$here/dockyard-debian12.box}")
size=${SIZE:-4G}

die() { echo "build-box: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, losetup, mount, chroot)"
for tool in debootstrap qemu-img sfdisk mkfs.ext4 losetup partx chroot; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install --no-install-recommends debootstrap qemu-utils fdisk e2fsprogs"
done

# The mirror apt already uses (deb822 .sources or a classic sources.list), else Debian's CDN.
mirror=${MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/ {u=$2} /^Suites:/ && /bookworm( |$)/ && u {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

# Vagrant's well-known insecure public key: Vagrant logs in with it once and puts a new key per VM.
insecure_key=${VAGRANT_INSECURE_KEY:-$(find /usr/share/rubygems-integration /usr/lib/ruby /opt/vagrant \
  -name vagrant.pub -path '*/keys/*' 2>/dev/null | head -n 1)}
[ -n "$insecure_key" ] && [ -f "$insecure_key" ] || die "Vagrant's keys/vagrant.pub not found: install vagrant, or set VAGRANT_INSECURE_KEY"

# Debian packages: the guest's own, and deploy/install.sh's list (so that it installs nothing).
base_pkgs=systemd-sysv,udev,dbus,openssh-server,sudo,python3,linux-image-amd64,initramfs-tools,iproute2,kmod,procps,netbase,criu,rsync
install_pkgs=${PACKAGES:-$(sed -n '/^pkgs=(/,/^)/p' "$repo/deploy/install.sh" | sed -e 's/#.*//' -e 's/pkgs=(//' -e 's/)//' | xargs | tr ' ' ',')}
[ -n "$install_pkgs" ] || die "could not read the package list from deploy/install.sh"

work=${WORK:-$(mktemp -d /var/tmp/dockyard-box.XXXXXX)}
root=$work/root
mnt=$work/mnt
raw=$work/disk.raw
loop=""

cleanup() {
  set +e
  for m in "$mnt/dev" "$mnt/proc" "$mnt/sys" "$mnt" "$root/tmp/wheels" "$root/dev" "$root/proc" "$root/sys"; do
    mountpoint -q "$m" && umount -l "$m"
  done
  [ -n "$loop" ] && { partx -d "$loop" 2>/dev/null; losetup -d "$loop"; }
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

bind_system() {  # $1: a root to chroot into
  mount --bind /dev "$1/dev"
  mount -t proc proc "$1/proc"
  mount -t sysfs sysfs "$1/sys"
}
unbind_system() {
  umount -l "$1/dev" "$1/proc" "$1/sys"
}

echo "build-box: debootstrap bookworm from $mirror into $root"
mkdir -p "$root" "$mnt"
cache_opt=()
if [ -n "${DEBS:-}" ]; then
  mkdir -p "$DEBS"
  cache_opt=(--cache-dir="$(realpath "$DEBS")")
fi
debootstrap "${cache_opt[@]}" --variant=minbase --include="$base_pkgs,$install_pkgs" bookworm "$root" "$mirror"

echo "build-box: configuring the guest"
echo dockyard > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 dockyard\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
printf '/dev/vda1 / ext4 errors=remount-ro 0 1\n' > "$root/etc/fstab"
# An empty machine-id is made anew at each clone's first boot; with a copied one every VM would
# send the same DHCP client id and get the same lease.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

cat > "$root/etc/systemd/network/80-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4

[DHCPv4]
# Identify by MAC, not by machine-id: clones must not share a lease.
ClientIdentifier=mac
NET
if [ -n "${UNMANAGED:-}" ]; then
  printf '[Match]\nName=%s\n\n[Link]\nUnmanaged=yes\n' "$UNMANAGED" > "$root/etc/systemd/network/10-unmanaged.network"
fi
chroot "$root" systemctl enable systemd-networkd.service

# Host keys: none in the box; each VM makes its own at first boot, before sshd starts.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-host-keys.service" <<'UNIT'
[Unit]
Description=Make this machine's SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
# ed25519 only: an RSA key takes tens of seconds under qemu's software emulation
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable ssh-host-keys.service ssh.service
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\n' > "$root/etc/ssh/sshd_config.d/10-host-key.conf"
# Debian's etcd-server starts an etcd of its own at boot: dockyard runs its own (the scheduler's, or
# cluster up's members). The periodic jobs only cost a slow guest CPU.
chroot "$root" systemctl disable etcd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  fstrim.timer dpkg-db-backup.timer 2>/dev/null || true

chroot "$root" useradd --create-home --shell /bin/bash --groups sudo vagrant
install -d -m 0700 "$root/home/vagrant/.ssh"
install -m 0600 "$insecure_key" "$root/home/vagrant/.ssh/authorized_keys"
chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"

echo "build-box: grub-pc"
bind_system "$root"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends grub-pc
cat > "$root/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
chroot "$root" apt-get clean
if [ -n "${WHEELS:-}" ]; then
  echo "build-box: /opt/dockyard/.venv from $WHEELS"
  mkdir -p "$root/opt/dockyard" "$root/tmp/wheels"
  mount --bind "$WHEELS" "$root/tmp/wheels"
  reqs=$(python3 -c 'import sys, tomllib; print(" ".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$repo/pyproject.toml")
  chroot "$root" python3 -m venv /opt/dockyard/.venv
  # shellcheck disable=SC2086  # the requirements are words
  chroot "$root" env PIP_CONFIG_FILE=/dev/null /opt/dockyard/.venv/bin/pip install -q --no-index \
    --find-links /tmp/wheels $reqs
  umount "$root/tmp/wheels"
  rmdir "$root/tmp/wheels"
fi
unbind_system "$root"
rm -rf "$root"/var/lib/apt/lists/*
if [ -n "${CRIU_PREFIX:-}" ]; then
  [ -x "$CRIU_PREFIX/bin/criu" ] || die "CRIU_PREFIX=$CRIU_PREFIX has no bin/criu"
  mkdir -p "$root$CRIU_PREFIX"
  cp -a "$CRIU_PREFIX/." "$root$CRIU_PREFIX/"
fi

echo "build-box: a $size disk with one partition"
truncate -s "$size" "$raw"
echo 'start=2048, type=83, bootable' | sfdisk --quiet "$raw"
loop=$(losetup --find --show --partscan "$raw")
# No udev here: ask the kernel for the partition device ourselves when losetup -P did not make it.
[ -b "${loop}p1" ] || partx -a "$loop"
[ -b "${loop}p1" ] || die "no partition device ${loop}p1"
mkfs.ext4 -q -L root -d "$root" "${loop}p1"

echo "build-box: grub-install"
mount "${loop}p1" "$mnt"
bind_system "$mnt"
chroot "$mnt" grub-install --target=i386-pc --modules="part_msdos ext2" "$loop"
chroot "$mnt" grub-mkconfig -o /boot/grub/grub.cfg
# grub-mkconfig names the loop device it saw (there is no udev to give it a UUID): the VM's
# disk is /dev/vda.
sed -i -E "s#root=(UUID=[^ ]+|/dev/loop[0-9]+p1)#root=/dev/vda1#g" "$mnt/boot/grub/grub.cfg"
grep -q 'root=/dev/vda1' "$mnt/boot/grub/grub.cfg" || die "grub.cfg has no root=/dev/vda1"
unbind_system "$mnt"
umount "$mnt"
partx -d "$loop" 2>/dev/null || true
losetup -d "$loop"
loop=""

echo "build-box: qcow2 and the box"
qemu-img convert -c -O qcow2 "$raw" "$work/box.img"
rm -f "$raw"
if [ -n "${IMAGE:-}" ]; then
  mv "$work/box.img" "$IMAGE.tmp" && mv "$IMAGE.tmp" "$IMAGE"
  echo "build-box: $IMAGE ($(du -h "$IMAGE" | cut -f1))"
  exit 0
fi
virtual_size=$(( $(numfmt --from=iec "$size") / 1024 / 1024 / 1024 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$virtual_size" > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'BOXVF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.driver = "qemu"
  end
end
BOXVF
tar -C "$work" -cf "$out" metadata.json Vagrantfile box.img
echo "build-box: $out ($(du -h "$out" | cut -f1)); next: vagrant box add --name dockyard/debian12 $out"
