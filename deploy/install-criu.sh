#!/usr/bin/env bash
# Installs CRIU >= 4 for dockyard's live migration, as root. Safe and quick to run again.
#
# Debian 12's criu 3.17 fails on new kernels ("vdso: Unexpected rt vDSO area bounds", FACTS.md),
# so when the system has no criu >= 4 we fetch Debian 13 (trixie)'s criu and the libraries it
# needs with apt-get, using a private sources list and private state and cache dirs so the
# system's apt configuration, lists and dpkg database are never touched, unpack them with
# `dpkg -x` into a private prefix, and write a wrapper that runs criu through that prefix's own
# loader (trixie's criu needs a newer glibc than bookworm's).
#
# Linux 6.16 restricted SO_PASSCRED/SO_PASSSEC to unix and netlink sockets, and criu < 4.2 then
# fails to dump ANY inet socket ("sockets: Can't get 1:16 opt: Operation not supported";
# checkpoint-restore/criu#2705, fixed in 4.2). So on such kernels we need criu >= 4.2, which
# trixie (4.1.1) lacks: the suites are tried in order, stable first, and the first whose criu is
# new enough for this kernel wins (today: trixie on kernels < 6.16, forky on newer ones).
#
# Never fails the caller: if CRIU cannot be installed it warns and exits 0, and live migration
# is simply unavailable on this host (the agent's `criu check` at start says so).
set -uo pipefail

PREFIX=${DOCKYARD_CRIU_PREFIX:-/opt/dockyard/criu}
# Candidate suites, most stable first (space-separated; DOCKYARD_CRIU_SUITE forces one).
SUITES=${DOCKYARD_CRIU_SUITE:-trixie trixie-backports forky}
# apt-get resolves criu's library closure (libc6, libcompel1, libgnutls30t64, libnftables1, libnet,
# libnl-3-200, libprotobuf-c1, libbsd0, libuuid1, ...) from the chosen suite.
PKGS=(criu)

log() { echo "install-criu: $*" >&2; }
warn_out() { log "WARNING: $*; live migration will be unavailable on this host"; exit 0; }

# "Version: 4.1.1" (or "criu version 3.17.1") -> 4.1.1
criu_version() {
  "$@" --version 2>/dev/null | sed -n 's/^[Vv]ersion:\{0,1\} *\([0-9][0-9.]*\).*/\1/p; s/^criu version \([0-9][0-9.]*\).*/\1/p' | head -n1
}
version_ge() { [ -n "$1" ] && dpkg --compare-versions "$1" ge "$2"; }

# The oldest criu that works on this kernel (see above).
kernel=$(uname -r)
if dpkg --compare-versions "${kernel%%-*}" ge 6.16; then need=4.2; else need=4.0; fi

check_criu() {
  local out
  out=$("$@" check 2>&1)
  if grep -q "Looks good" <<<"$out"; then
    log "criu check: Looks good."
  else
    log "WARNING: '$* check' did not pass; live migration may not work here:"
    tail -n 5 <<<"$out" >&2
  fi
}

# 1. A system criu >= 4 wins.
if sys=$(command -v criu) && [ "${sys}" != "$PREFIX/bin/criu" ]; then
  have=$(criu_version "$sys")
  if version_ge "$have" "$need"; then
    log "using the system's $sys (version $have)"
    exit 0
  fi
  log "system criu at $sys is version ${have:-unknown}, kernel $kernel needs >= $need; installing a private criu"
fi

# 2. Already installed in the prefix: done.
if [ -x "$PREFIX/bin/criu" ]; then
  have=$(criu_version "$PREFIX/bin/criu")
  if version_ge "$have" "$need"; then
    log "$PREFIX/bin/criu already installed (version $have)"
    exit 0
  fi
  log "$PREFIX/bin/criu is version ${have:-broken}, kernel $kernel needs >= $need; reinstalling"
fi

[ "$(id -u)" -eq 0 ] || warn_out "must run as root"
for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || warn_out "$tool not found (not a Debian-like host)"
done

arch=$(dpkg --print-architecture)
case "$arch" in
  amd64) triplet=x86_64-linux-gnu; loader=ld-linux-x86-64.so.2 ;;
  arm64) triplet=aarch64-linux-gnu; loader=ld-linux-aarch64.so.1 ;;
  *) warn_out "no private criu recipe for architecture $arch" ;;
esac

# 3. The Debian mirror this host already uses: the source whose suites include the host's own
# codename (not -security, -updates), from one-line .list or deb822 .sources files.
codename=$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")
find_mirror() {
  local files=() f
  local etc=${DOCKYARD_APT_ETC:-/etc/apt}
  [ -f "$etc/sources.list" ] && files+=("$etc/sources.list")
  for f in "$etc"/sources.list.d/*.list "$etc"/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 1
  # Prints "URI<TAB>KEYRING" for every binary source, the ones carrying the host's codename first.
  awk -v want="$codename" '
    function emit(uri, suites, key,   n, i, s, rank) {
      rank = 1
      n = split(suites, s, /[ \t]+/)
      for (i = 1; i <= n; i++) if (s[i] == want && want != "") rank = 0
      if (rank == 1 && uri !~ /\/debian\/?$/) return
      printf "%d\t%s\t%s\n", rank, uri, key
    }
    FILENAME ~ /\.list$/ {
      if ($1 != "deb" || $0 ~ /^[ \t]*#/) next
      key = ""; i = 2
      if ($2 ~ /^\[/) {
        while (i <= NF) { if ($i ~ /signed-by=/) { key = $i; sub(/.*signed-by=/, "", key); sub(/\]$/, "", key) }
                          if ($i ~ /\]$/) { i++; break } ; i++ }
      }
      emit($i, $(i + 1), key); next
    }
    FILENAME ~ /\.sources$/ {
      if (FNR == 1) { flush(); }
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      if ($0 ~ /^#/) next
      line = $0; field = tolower(line); sub(/:.*/, "", field); val = line; sub(/^[^:]*:[ \t]*/, "", val)
      if (field == "types") types = val; else if (field == "uris") uris = val
      else if (field == "suites") suites = val; else if (field == "signed-by") signedby = val
      else if (field == "enabled") enabled = tolower(val)
      next
    }
    function flush(   n, u, i) {
      if (uris != "" && types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
        n = split(uris, u, /[ \t]+/)
        for (i = 1; i <= n; i++) emit(u[i], suites, signedby)
      }
      types = ""; uris = ""; suites = ""; signedby = ""; enabled = ""
    }
    END { flush() }
  ' "${files[@]}" | sort -s -n -k1,1 | head -n1 | cut -f2-
}
found=$(find_mirror) || true
mirror=${DOCKYARD_CRIU_MIRROR:-$(cut -f1 <<<"$found")}
keyring=$(cut -s -f2 <<<"$found")
[ -n "$mirror" ] || warn_out "no Debian mirror found in /etc/apt/sources.list{,.d}"
# A Signed-By that is an inline key block, or a keyring without the trixie keys, is no use here.
if [ -z "$keyring" ] || [ ! -f "$keyring" ]; then
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
fi
log "looking for criu >= $need (kernel $kernel) in $mirror $SUITES (keyring $keyring)"

# 4. Download with private apt state. An empty dpkg status makes apt resolve the whole library
# closure from trixie (the host's bookworm libc6 cannot satisfy trixie's criu).
work=$(mktemp -d /tmp/dockyard-criu.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/cache" "$work/state" "$work/root"
: >"$work/state/status"
for suite in $SUITES; do
  echo "deb [signed-by=$keyring] $mirror $suite main"
done >"$work/sources.list"
apt_opts=(
  -q -o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=-
  -o Dir::Etc::preferences=/dev/null -o Dir::Etc::preferencesparts=-
  -o Dir::State="$work/state" -o Dir::State::status="$work/state/status"
  -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache"
  -o Dir::Cache::archives="$work/archives" -o Dir::Log="$work"
  -o APT::Architecture="$arch" -o APT::Architectures="$arch"
  -o APT::Install-Recommends=false -o APT::Install-Suggests=false
  -o Acquire::Languages=none -o Debug::NoLocking=true
  -o APT::Get::List-Cleanup=false
)
# A suite missing on the mirror (no backports, say) is no failure while another one answers.
apt-get "${apt_opts[@]}" update >"$work/apt.log" 2>&1
# "criu | 4.1.1-1 | http://deb.debian.org/debian trixie/main amd64 Packages" -> "trixie 4.1.1-1"
apt-cache "${apt_opts[@]}" madison criu 2>/dev/null |
  awk -F'|' '{ gsub(/ /, "", $2); split($3, w, " "); split(w[2], s, "/"); print s[1], $2 }' >"$work/candidates"
SUITE="" fallback=""
for suite in $SUITES; do
  v=$(awk -v s="$suite" '$1 == s { print $2; exit }' "$work/candidates")
  [ -n "$v" ] || continue
  [ -n "$fallback" ] || fallback=$suite
  if version_ge "$v" "$need"; then SUITE=$suite; break; fi
done
if [ -z "$SUITE" ]; then
  [ -n "$fallback" ] || { tail -n 5 "$work/apt.log" >&2; warn_out "no criu found in $SUITES"; }
  SUITE=$fallback
  log "WARNING: no criu >= $need in $SUITES; taking $SUITE's, which cannot dump inet sockets on kernel $kernel"
fi
log "fetching criu $(awk -v s="$SUITE" '$1 == s { print $2; exit }' "$work/candidates") from $SUITE"
# -t makes the whole library closure come from the chosen suite.
if ! apt-get "${apt_opts[@]}" -t "$SUITE" -y --download-only install "${PKGS[@]}" >>"$work/apt.log" 2>&1; then
  tail -n 10 "$work/apt.log" >&2
  warn_out "apt-get could not download criu from $SUITE"
fi

# 5. Unpack into a fresh dir and move it into place in one rename, so a half install never shows.
n=0
for deb in "$work"/archives/*.deb; do
  dpkg -x "$deb" "$work/root" || warn_out "dpkg -x $deb failed"
  n=$((n + 1))
done
[ -x "$work/root/usr/sbin/criu" ] || warn_out "the downloaded packages hold no usr/sbin/criu"
libdirs="$PREFIX/usr/lib/$triplet:$PREFIX/lib/$triplet"
for ld in "usr/lib/$triplet/$loader" "lib/$triplet/$loader" "usr/lib64/$loader" "lib64/$loader"; do
  if [ -e "$work/root/$ld" ]; then ldpath=$ld; break; fi
done
[ -n "${ldpath:-}" ] || warn_out "no $loader in the downloaded libc6"
mkdir -p "$work/root/bin"
cat >"$work/root/bin/criu" <<EOF
#!/bin/sh
# dockyard's private criu (Debian $SUITE), run through its own loader and libraries.
exec "$PREFIX/$ldpath" --library-path "$libdirs" "$PREFIX/usr/sbin/criu" "\$@"
EOF
chmod 0755 "$work/root/bin/criu"
ls "$work"/archives/*.deb | xargs -n1 basename >"$work/root/PACKAGES"

mkdir -p "$(dirname "$PREFIX")"
rm -rf "$PREFIX.old"
[ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
mv "$work/root" "$PREFIX" || warn_out "could not move the criu prefix into $PREFIX"
rm -rf "$PREFIX.old"

version_ge "$(criu_version "$PREFIX/bin/criu")" 4.0 || warn_out "$PREFIX/bin/criu does not run"
log "installed criu $("$PREFIX/bin/criu" --version 2>/dev/null | head -n1 | awk '{print $NF}') from $n packages into $PREFIX"
check_criu "$PREFIX/bin/criu"
exit 0
