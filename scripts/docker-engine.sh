#!/usr/bin/env bash
# Make sure a Docker engine answers, starting Debian's dockerd when none runs (CI, a fresh machine).
# Prints "started" when it started one, so that a test session can stop what it started.
set -euo pipefail
if docker info >/dev/null 2>&1; then
  exit 0
fi
command -v dockerd >/dev/null || { echo "docker-engine: dockerd is not installed (make setup installs docker.io)" >&2; exit 1; }
# dockerd needs the cgroup hierarchies mounted. A chroot (a fresh-machine check) sees /sys without them, so mount
# them the way the host has them: one v1 mount per hierarchy, with the same controllers, or the v2 tree.
ensure_cgroups() {
  [ -e /sys/fs/cgroup/cgroup.controllers ] && return 0
  grep -q ' - cgroup cgroup .*devices' /proc/self/mountinfo && return 0
  mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
  if awk 'NR > 1 && $2 > 0 && $4 == 1 {found=1} END {exit !found}' /proc/cgroups; then
    for subs in $(awk 'NR > 1 && $2 > 0 && $4 == 1 {h[$2] = h[$2] ? h[$2] "," $1 : $1} END {for (k in h) print h[k]}' /proc/cgroups); do
      mkdir -p "/sys/fs/cgroup/$subs"
      mountpoint -q "/sys/fs/cgroup/$subs" || mount -t cgroup -o "$subs" cgroup "/sys/fs/cgroup/$subs"
    done
    mkdir -p /sys/fs/cgroup/systemd
    mountpoint -q /sys/fs/cgroup/systemd || mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || true
  else
    umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
  fi
}
ensure_cgroups
opts=()
# overlay2 cannot stack on an overlay root (a container or chroot of its own); vfs is slow but works there.
mkdir -p /var/lib/docker
if [ "$(stat -f -c %T /var/lib/docker)" = "overlayfs" ]; then
  opts+=(--storage-driver vfs)
fi
nohup dockerd "${opts[@]}" >/var/log/otelbpf-dockerd.log 2>&1 &
echo $! >/run/otelbpf-dockerd.pid
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo started
    exit 0
  fi
  sleep 0.5
done
echo "docker-engine: dockerd did not answer within 30 s; its log:" >&2
tail -20 /var/log/otelbpf-dockerd.log >&2
exit 1
