#!/usr/bin/env bash
# Link the distribution's nearest kernel headers when the running kernel has none.
set -euo pipefail
krel=$(uname -r)
build=/lib/modules/$krel/build
if [ -d "$build/include" ]; then
  exit 0
fi
# Prefer the exact package, then the distribution's current one.
if apt-get install -y -qq "linux-headers-$krel" >/dev/null 2>&1; then
  [ -d "$build/include" ] && exit 0
fi
arch=$(dpkg --print-architecture)
dpkg-query -W -f='${Status}' "linux-headers-$arch" 2>/dev/null | grep -q "install ok installed" || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$arch"
}
hdr=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -1)
common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
if [ -z "$hdr" ]; then
  echo "kernel-headers: no linux-headers package found" >&2
  exit 1
fi
mkdir -p "/lib/modules/$krel"
ln -sfn "$hdr" "$build"
[ -n "$common" ] && ln -sfn "$common" "/lib/modules/$krel/source"
echo "kernel-headers: linked $hdr as $build (kernel $krel has no headers package)"
