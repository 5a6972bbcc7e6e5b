#!/usr/bin/env bash
# The otelbpf image's entrypoint: make tracefs and kernel headers available, say which headers bcc compiles
# against, then run the command (by default `otelbpf run`).
#
# Privileges, BTF and tracepoints are otelbpf's own preflight's to check: it turns each into one clear line.
# Nothing here fails; what cannot be set up is left for that preflight to report.
set -uo pipefail
krel=$(uname -r)
build=/lib/modules/$krel/build
# The Debian headers the image carries, outside /usr/src so that a host's /usr/src mounted over it hides nothing.
image_headers=${OTELBPF_IMAGE_HEADERS:-/opt/kernel-headers}
link_script=${OTELBPF_KERNEL_HEADERS_SCRIPT:-/usr/local/lib/otelbpf/kernel-headers.sh}

# A privileged container gets a fresh /sys without tracefs unless the host's was mounted in.
if [ ! -d /sys/kernel/tracing/events ] && [ ! -d /sys/kernel/debug/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing >/dev/null 2>&1 || true
fi

# One line on the headers bcc will compile against, for the commands that load probes.
say() {
  case "${1:-} ${2:-}" in
    "otelbpf run" | "otelbpf record") echo "otelbpf-entrypoint: kernel headers: $msg" >&2 ;;
  esac
}
if [ -d "$build/include" ]; then
  msg="$(readlink -f "$build"), the host's"
else
  # The host's /lib/modules is usually mounted read-only: a tmpfs over it takes the link instead (otelbpf
  # reads no module from there).
  if [ -d /lib/modules ] && [ ! -w /lib/modules ]; then
    mount -t tmpfs -o mode=0755 tmpfs /lib/modules >/dev/null 2>&1 || true
  fi
  if bash "$link_script" --link-only "$image_headers" >/dev/null 2>&1 && [ -d "$build/include" ]; then
    msg="the image's Debian $(basename "$(readlink -f "$build")"), as the host mounts none at $build (near"
    msg+=" headers suffice: struct offsets come from BTF)"
  else
    msg="none usable at $build: mount the host's /lib/modules and /usr/src read-only"
  fi
fi
say "$@"

exec "$@"
