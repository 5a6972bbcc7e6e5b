"""Run a command (curl, wget, ...) as a child once told to, so a test can trace it from its first syscall.

usage: run_paused.py COMMAND [ARG...]

Prints "paused"; on a "go" line runs COMMAND to completion as a child (a traced pid's children are
traced: the kernel follows the fork), prints one JSON object {"pid", "returncode", "stdout",
"stderr"}, then stays alive until stdin closes (the helpers.PausedClient protocol).
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> None:
    argv = sys.argv[1:]
    if not argv:
        sys.exit(__doc__)
    print("paused", flush=True)
    sys.stdin.readline()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    print(json.dumps({"pid": proc.pid, "returncode": proc.returncode, "stdout": out, "stderr": err}), flush=True)
    sys.stdin.read()  # until the test closes stdin


if __name__ == "__main__":
    main()
