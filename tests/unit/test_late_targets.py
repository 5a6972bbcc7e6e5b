"""Processes that start while the probes compile are picked up by a second look."""

import subprocess
import sys

from otelbpf.runner import _late_targets
from otelbpf.targets import TargetSpec


def test_a_process_started_during_the_compile_is_found_and_an_exited_pid_is_no_error():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        spec = TargetSpec(pids=[gone.pid, sleeper.pid])
        assert _late_targets(spec, None, set()) == {sleeper.pid}
        assert _late_targets(spec, None, {sleeper.pid}) == set()
    finally:
        sleeper.kill()
        sleeper.wait()
