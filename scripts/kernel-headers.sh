#!/usr/bin/env bash
# Link the distribution's nearest kernel headers when the running kernel has none.
#
#   kernel-headers.sh                      make setup: install the exact or the distribution's headers, link them
#   kernel-headers.sh --link-only [DIR]    never run apt: link the newest headers found in DIR (default /usr/src);
#                                          the container entrypoint's fallback when the host mounts none
#   kernel-headers.sh --fetch DIR          unpack the distribution's headers into DIR without installing them
#                                          (the image: no kbuild, no gcc, which the headers package pulls in)
#
# bcc compiles against /lib/modules/$(uname -r)/build. Struct layouts are never read through these headers
# (socket offsets come from BTF), so a near version is enough.
set -euo pipefail
krel=$(uname -r)
build=/lib/modules/$krel/build
arch=$(dpkg --print-architecture)

# Link the newest linux-headers-*-ARCH tree under $1 as build, its -common tree as source (bcc takes the
# generated headers from build and the rest from source).
link_from() {
  local hdr common
  hdr=$(ls -d "$1"/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -1 || true)
  common=$(ls -d "$1"/linux-headers-*-common 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$hdr" ]; then
    echo "kernel-headers: no linux-headers-*-$arch tree in $1" >&2
    return 1
  fi
  mkdir -p "/lib/modules/$krel"
  ln -sfn "$hdr" "$build"
  if [ -n "$common" ]; then
    ln -sfn "$common" "/lib/modules/$krel/source"
  fi
  echo "kernel-headers: linked $hdr as $build (kernel $krel has no headers package)"
}

# Unpack linux-headers-<version>-ARCH and its -common package into $1 (apt lists must be current).
fetch_into() {
  local dest=$1 pkg common tmp
  # awk reads to the end: exiting early would fail apt-cache with SIGPIPE, and pipefail the whole line.
  pkg=$(apt-cache depends "linux-headers-$arch" | awk '/Depends: linux-headers-/ && !p {p = $2} END {print p}')
  [ -n "$pkg" ] || { echo "kernel-headers: linux-headers-$arch names no headers package" >&2; return 1; }
  common=$(apt-cache depends "$pkg" | awk '/Depends: linux-headers-.*-common/ && !p {p = $2} END {print p}')
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" $common)
  mkdir -p "$dest"
  for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$tmp/root"
  done
  # Only this machine's architecture: the -common tree carries every one's arch/ headers.
  local karch
  case "$arch" in
    amd64 | i386) karch=x86 ;;
    arm64) karch=arm64 ;;
    armhf | armel) karch=arm ;;
    ppc64el | powerpc) karch=powerpc ;;
    riscv64) karch=riscv ;;
    s390x) karch=s390 ;;
    *) karch= ;;
  esac
  if [ -n "$karch" ] && [ -d "$tmp/root/usr/src/${common}/arch/$karch" ]; then
    find "$tmp/root/usr/src/${common}/arch" -mindepth 1 -maxdepth 1 ! -name "$karch" -exec rm -rf {} +
  fi
  # The trees' scripts/ and tools/ links point into linux-kbuild, which compiling BPF does not need.
  mv "$tmp"/root/usr/src/linux-headers-* "$dest"/
  rm -rf "$tmp"
  echo "kernel-headers: unpacked $pkg${common:+ and $common} into $dest"
}

case "${1:-}" in
  --fetch)
    fetch_into "${2:?usage: kernel-headers.sh --fetch DIR}"
    exit 0
    ;;
  --link-only)
    [ -d "$build/include" ] && exit 0
    link_from "${2:-/usr/src}"
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: kernel-headers.sh [--link-only [DIR] | --fetch DIR]" >&2
    exit 2
    ;;
esac

if [ -d "$build/include" ]; then
  exit 0
fi
# Prefer the exact package, then the distribution's current one.
if apt-get install -y -qq "linux-headers-$krel" >/dev/null 2>&1; then
  [ -d "$build/include" ] && exit 0
fi
dpkg-query -W -f='${Status}' "linux-headers-$arch" 2>/dev/null | grep -q "install ok installed" || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$arch"
}
link_from /usr/src
