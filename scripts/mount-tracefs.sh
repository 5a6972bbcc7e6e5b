#!/usr/bin/env bash
# Tracepoints need tracefs; a fresh boot may not have it mounted.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
