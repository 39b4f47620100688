"""The start-up heap freeze of the long-running processes (`core.heap`): done once per process, again
in a forked child, and by the API's lifespan and the worker's signal receivers."""

from __future__ import annotations

import gc
import os

import pytest

from core import heap

pytestmark = pytest.mark.pure


def _in_child(check) -> int:
    """Run `check()` (True: success) in a forked child; its exit code (0 when it returned True)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_heap_is_frozen_once_per_process():
    heap.freeze_startup_heap()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    later = [[] for _ in range(1000)]  # objects made after start-up
    heap.freeze_startup_heap()
    assert gc.get_freeze_count() == frozen  # not again: what comes later is collected as usual
    assert later


def test_a_forked_child_freezes_what_it_inherited_and_made():
    heap.freeze_startup_heap()
    frozen = gc.get_freeze_count()

    def check() -> bool:
        made = [[] for _ in range(1000)]  # lists are tracked by the collector (empty dicts are not)
        heap.freeze_startup_heap()
        return gc.get_freeze_count() >= frozen + len(made)

    assert _in_child(check) == 0


def test_a_worker_pool_process_and_the_main_process_freeze_theirs():
    from workers import celery_app

    def pool_process() -> bool:
        gc.unfreeze()
        celery_app._reset_after_fork()
        return gc.get_freeze_count() > 0

    def main_process() -> bool:
        gc.unfreeze()
        celery_app._started()
        return gc.get_freeze_count() > 0

    assert _in_child(pool_process) == 0
    assert _in_child(main_process) == 0
