"""coalesce_mappings: a run of one process's mappings is handled once, at the earliest time."""

from otelbpf.events import TASK_EXEC, TASK_EXIT, TASK_FORK, TASK_MAP, TaskEvent
from otelbpf.tls_follow import coalesce_mappings


def ev(kind: int, pid: int, ns: int, parent: int = 0) -> TaskEvent:
    return TaskEvent(kind, pid, parent, ns)


def test_a_run_of_mappings_becomes_its_last_at_its_first_time():
    evs = [ev(TASK_EXEC, 5, 1), ev(TASK_MAP, 5, 2), ev(TASK_MAP, 6, 3), ev(TASK_MAP, 5, 4), ev(TASK_MAP, 5, 7)]
    assert coalesce_mappings(evs) == [ev(TASK_EXEC, 5, 1), ev(TASK_MAP, 6, 3), ev(TASK_MAP, 5, 2)]


def test_a_fork_exec_or_exit_of_the_process_ends_a_run():
    evs = [
        ev(TASK_MAP, 5, 1), ev(TASK_MAP, 5, 2), ev(TASK_EXEC, 5, 3), ev(TASK_MAP, 5, 4),
        ev(TASK_FORK, 5, 5, parent=1), ev(TASK_MAP, 5, 6), ev(TASK_EXIT, 5, 8),
    ]  # fmt: skip
    assert coalesce_mappings(evs) == [
        ev(TASK_MAP, 5, 1), ev(TASK_EXEC, 5, 3), ev(TASK_MAP, 5, 4),
        ev(TASK_FORK, 5, 5, parent=1), ev(TASK_MAP, 5, 6), ev(TASK_EXIT, 5, 8),
    ]  # fmt: skip


def test_nothing_to_coalesce():
    assert coalesce_mappings([]) == []
    evs = [ev(TASK_FORK, 9, 1, parent=5), ev(TASK_EXIT, 9, 2)]
    assert coalesce_mappings(evs) == evs
