#!/usr/bin/env bash
# Provide the image's base, debian:bookworm-slim: pulled when a registry answers, otherwise a Debian 12 minbase
# made with debootstrap and imported under that name (machines that cannot pull images).
set -euo pipefail
BASE=${BASE_IMAGE:-debian:bookworm-slim}
docker image inspect "$BASE" >/dev/null 2>&1 && exit 0
if timeout 60 docker pull -q "$BASE" >/dev/null 2>&1; then
  exit 0
fi
cache=/var/cache/otelbpf
tarball=$cache/debian-bookworm-slim.tar
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "base-image: debootstrap is not installed (make setup installs it)" >&2; exit 1; }
  # The mirror is the one this machine's apt already uses.
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  root=$(mktemp -d /var/tmp/otelbpf-rootfs.XXXX)
  echo "base-image: $BASE cannot be pulled; making a Debian 12 minbase with debootstrap from $mirror (a few minutes, once)" >&2
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/var/tmp/otelbpf-debootstrap.log 2>&1 || {
    echo "base-image: debootstrap failed; see /var/tmp/otelbpf-debootstrap.log" >&2; rm -rf "$root"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # Slim as the official image is: no documentation, man pages or translations, now or from later installs.
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    >"$root"/etc/dpkg/dpkg.cfg.d/docker-slim
  find "$root"/usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete
  find "$root"/usr/share/doc -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
  # mktemp made the root 0700; an image's / must be 0755, or non-root container users (postgres) cannot
  # reach /bin under storage drivers that keep the layer root's mode (vfs).
  chmod 0755 "$root"
  mkdir -p "$cache"
  tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
fi
docker import --change 'CMD ["bash"]' "$tarball" "$BASE" >/dev/null
echo "base-image: imported a debootstrap Debian 12 (slimmed) as $BASE" >&2
