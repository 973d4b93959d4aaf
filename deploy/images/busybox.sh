#!/bin/sh
# Build the busybox base image's root filesystem from Debian's busybox-static, as a tar.
#
#   deploy/images/busybox.sh | dockyard import - busybox:latest
#   deploy/images/busybox.sh -o busybox.tar
#
# The rootfs: /bin/busybox (static) and a symlink to it for every applet at its usual place
# (/bin/sh, /usr/bin/wget, /sbin/ifconfig ... what `busybox --install -s` makes), /etc/passwd and
# /etc/group with root and nobody, /etc/hosts, /etc/nsswitch.conf, empty /etc/resolv.conf and
# /etc/hostname (the runtime fills them), /tmp 1777, /root 0700, empty /proc /sys /dev, /home, /var.
# Owned by root (numeric 0:0), entries sorted and dated SOURCE_DATE_EPOCH (default 0), so the same
# busybox binary always gives the same tar and so the same image id.
#
# Needs: busybox-static (apt-get install busybox-static), GNU tar. Root is not needed.
# Environment: BUSYBOX (default /bin/busybox), SOURCE_DATE_EPOCH.
set -eu

out=-
while [ $# -gt 0 ]; do
    case "$1" in
        -o|--output) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "busybox.sh: unknown argument: $1 (use -o FILE)" >&2; exit 2 ;;
    esac
done

busybox="${BUSYBOX:-/bin/busybox}"
epoch="${SOURCE_DATE_EPOCH:-0}"
if [ ! -x "$busybox" ]; then
    echo "busybox.sh: $busybox not found; apt-get install busybox-static" >&2
    exit 1
fi
if ! "$busybox" --list-full >/dev/null 2>&1; then
    echo "busybox.sh: $busybox does not run (is it the static build from busybox-static?)" >&2
    exit 1
fi
if [ "$out" = - ] && [ -t 1 ]; then
    echo "busybox.sh: refusing to write a tar to a terminal; pipe it or use -o FILE" >&2
    exit 2
fi

umask 022
work="$(mktemp -d "${TMPDIR:-/tmp}/busybox-rootfs.XXXXXX")"
trap 'rm -rf "$work"' EXIT INT TERM
root="$work/rootfs"
mkdir -p "$root"
cd "$root"

mkdir -p bin sbin usr/bin usr/sbin etc root tmp proc sys dev home var/tmp var/log var/run var/www
chmod 1777 tmp var/tmp
chmod 0700 root
cp "$busybox" bin/busybox
chmod 0755 bin/busybox

# One symlink per applet, at the place `busybox --list-full` gives, pointing at /bin/busybox.
"$busybox" --list-full | while read -r applet; do
    case "$applet" in
        ""|bin/busybox) continue ;;
    esac
    mkdir -p "$(dirname "$applet")"
    [ -e "$applet" ] || [ -L "$applet" ] || ln -s /bin/busybox "$applet"
done

cat > etc/passwd <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > etc/group <<'EOF'
root:x:0:
nobody:x:65534:
EOF
cat > etc/shadow <<'EOF'
root:*:0:0:99999:7:::
nobody:*:0:0:99999:7:::
EOF
chmod 0640 etc/shadow
cat > etc/hosts <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
echo "hosts: files dns" > etc/nsswitch.conf
: > etc/resolv.conf
: > etc/hostname
cat > etc/os-release <<EOF
NAME="dockyard busybox"
ID=busybox
VERSION_ID="$("$busybox" | head -n 1 | sed -n 's/^BusyBox v\([^ ]*\).*/\1/p')"
PRETTY_NAME="BusyBox base image (Debian busybox-static)"
EOF

cd "$work"
if [ "$out" = - ]; then
    tar --numeric-owner --owner=0 --group=0 --sort=name --mtime="@$epoch" --format=gnu -C rootfs -cf - .
else
    tmp_out="$out.tmp.$$"
    tar --numeric-owner --owner=0 --group=0 --sort=name --mtime="@$epoch" --format=gnu -C rootfs -cf "$tmp_out" .
    mv "$tmp_out" "$out"
fi
