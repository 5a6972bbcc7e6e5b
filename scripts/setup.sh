#!/usr/bin/env bash
# Install what otelbpf needs on Debian/Ubuntu, as root. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every package anything here uses, grouped by who needs it. The list is checked against a pristine
# Debian 12 (../shared/tools/fresh-machine.sh): what a development machine happens to have does not count.
RUNTIME="python3 python3-venv python3-bpfcc bpftool"
# make demo: its servers and clients.
DEMO="curl nginx-light openssl nodejs"
# make test: gcc links the fake TLS libraries and ELF files the unit tests build (libc6-dev carries crt1.o
# and crti.o, which gcc only recommends); readelf (binutils) cross-checks the ELF reader; setpriv
# (util-linux) drops root for the not-root test; libnss3 and libgnutls-openssl27 are the look-alike
# libraries that TLS discovery must refuse; wget is the GnuTLS client; the database tests start private
# postgresql, mariadb-server and redis-server instances and drive them with psql, mariadb and redis-cli; the
# TCP tests drop loopback packets with nftables and read the kernel's own socket counters with ss (iproute2).
TEST="gcc libc6-dev binutils make util-linux libnss3 libgnutls-openssl27 wget
  postgresql postgresql-client mariadb-server mariadb-client redis-server redis-tools nftables iproute2"
# make image and the container tests: Debian's Docker engine and docker-compose, and debootstrap to stand in the
# base image when it cannot be pulled.
CONTAINERS="docker.io docker-compose debootstrap"
# make bench: load generators.
BENCH="wrk apache2-utils"
APT_PACKAGES=${APT_PACKAGES:-"$RUNTIME $DEMO $TEST $CONTAINERS $BENCH"}

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

# nginx-light's and the databases' packages start system services where systemd runs; tests and
# benchmarks run their own, on free ports.
if command -v systemctl >/dev/null 2>&1; then
  for unit in nginx redis-server postgresql mariadb; do
    if systemctl is-active --quiet "$unit" 2>/dev/null; then
      systemctl stop "$unit" || true
      systemctl disable "$unit" >/dev/null 2>&1 || true
    fi
  done
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
