#!/usr/bin/env bash
# Install what otelbpf needs on Debian/Ubuntu, as root. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=${APT_PACKAGES:-"python3 python3-venv python3-bpfcc bpftool gcc make curl nginx-light wrk apache2-utils openssl wget nodejs"}

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs packages and links kernel headers)" >&2
  exit 1
fi

missing=()
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Kernels without a headers package (custom or
# VM kernels) get the distribution's nearest headers linked in; struct layouts are never read
# through them (socket offsets come from BTF), so a near version is enough.
bash scripts/kernel-headers.sh

# nginx-light's package starts a system nginx on :80; tests and benchmarks run their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
  systemctl disable nginx >/dev/null 2>&1 || true
fi

# The venv must use the distribution's Python: python3-bpfcc is installed for it.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  rm -rf .venv
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# Make the distribution's bcc importable in the venv without the rest of dist-packages.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
.venv/bin/python -c 'import bcc, otelbpf; print("setup: ok, bcc", getattr(bcc, "__version__", "?"))'
