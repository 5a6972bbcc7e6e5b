"""Start a command as a child each time told to, so a test can trace the parent and see its children.

usage: spawner.py COMMAND [ARG...]

Prints "paused"; on each "go" line runs COMMAND to completion as a new child (a traced pid's children
are traced: the kernel follows the fork, and the child execs COMMAND), then prints one JSON object
{"pid", "returncode", "stdout", "stderr"}. Exits when stdin closes (the helpers.PausedClient protocol,
repeated).
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
    for _ in sys.stdin:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        stdout, stderr = proc.communicate(timeout=60)
        out = {"pid": proc.pid, "returncode": proc.returncode, "stdout": stdout, "stderr": stderr}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
