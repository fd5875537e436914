"""forked_map: results in item order from processes of their own, a child's error raised in the parent, a dead
child named with its signal and its siblings stopped, and no child outliving its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from mgdata.extract import PixelBudget, pixel_budget
from mgdata.forked import WorkerDied, forked_map
from mgdata.storage.local import _pid_alive


def wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_results_come_back_in_item_order_each_from_its_own_process():
    got = forked_map(lambda n: (n * n, os.getpid()), [3, 1, 2])
    assert [square for square, _ in got] == [9, 1, 4]
    pids = {pid for _, pid in got}
    assert len(pids) == 3 and os.getpid() not in pids


def test_a_large_result_is_read_whole():
    blob = os.urandom(
        5 * 1024 * 1024
    )  # far beyond a pipe's buffer: the parent must read while children write
    assert forked_map(lambda i: blob[i:], [0, 1, 2]) == [blob, blob[1:], blob[2:]]


def test_what_a_child_changes_in_memory_stays_in_the_child():
    seen: list[int] = []
    forked_map(lambda n: seen.append(n), [1, 2])
    assert seen == []


def test_a_childs_exception_is_raised_in_the_parent_with_its_type_message_and_traceback():
    def fail_on_two(n: int) -> int:
        if n == 2:
            raise ValueError(f"member {n} is broken")
        return n

    with pytest.raises(ValueError, match="member 2 is broken") as raised:
        forked_map(fail_on_two, [1, 2, 3])
    (note,) = raised.value.__notes__  # where in the child it was raised
    assert note.startswith("in forked worker process ") and "in fail_on_two" in note


def test_an_exception_that_cannot_be_pickled_still_names_its_type_and_message():
    class Local(Exception):  # a class defined in a function: pickle cannot find it by name
        pass

    def fail(_: int) -> None:
        raise Local("cannot travel")

    with pytest.raises(RuntimeError, match="Local: cannot travel"):
        forked_map(fail, [1])


def test_a_killed_child_is_named_with_its_signal_and_its_siblings_are_stopped(tmp_path):
    def work(n: int) -> int:
        if n == 0:
            while not list(tmp_path.glob("sibling-*")):  # die only once the sibling runs
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        (tmp_path / f"sibling-{os.getpid()}").write_text("")
        time.sleep(60)
        return n

    started = time.monotonic()
    with pytest.raises(WorkerDied, match=r"worker 1 of 2 was killed by signal 9 \(SIGKILL\)"):
        forked_map(work, [0, 1])
    assert time.monotonic() - started < 30  # not left to sleep its minute out
    (sibling,) = tmp_path.glob("sibling-*")
    assert not _pid_alive(int(sibling.name.split("-")[1]))


def test_a_child_that_exits_without_a_result_is_named_with_its_status():
    with pytest.raises(WorkerDied, match=r"worker [12] of 2 exited with status 3 before"):
        forked_map(lambda _: os._exit(3), [0, 1])


def test_children_die_with_their_parent(tmp_path):
    """A task process killed mid-extract leaves no worker writing behind it."""
    script = (
        "import os, time\n"
        "from mgdata.forked import forked_map\n"
        f"forked_map(lambda n: (open({str(tmp_path)!r} + f'/child-{{os.getpid()}}', 'w').close(),"
        " time.sleep(120)), [1, 2])\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert wait_for(lambda: len(list(tmp_path.glob("child-*"))) == 2, 30)
        children = [int(p.name.split("-")[1]) for p in tmp_path.glob("child-*")]
        assert all(_pid_alive(pid) for pid in children)
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not any(_pid_alive(pid) for pid in children))
    finally:
        parent.kill()


def test_the_pixel_budget_is_one_budget_across_forked_workers(tmp_path):
    """A worker holding the whole budget makes the parent's threads wait for it, and its release frees them."""
    budget = PixelBudget(1000)
    release = tmp_path / "release"

    def hold_all(_: int) -> int:
        with budget.hold(1000):
            while not release.exists():
                time.sleep(0.01)
        return budget.used

    worker = threading.Thread(target=lambda: forked_map(hold_all, [0]), daemon=True)
    worker.start()
    try:
        assert wait_for(lambda: budget.used == 1000)  # the child's hold, seen from the parent
        got = threading.Event()

        def parent_decode() -> None:
            with budget.hold(10):
                got.set()

        waiting = threading.Thread(target=parent_decode, daemon=True)
        waiting.start()
        assert not got.wait(0.5)  # the parent's decode waits for the child's pixels
        release.touch()
        assert got.wait(10)
        waiting.join()
    finally:
        release.touch()
        worker.join()
    assert budget.used == 0


def test_after_a_childs_error_its_siblings_finish_and_nothing_is_lost(tmp_path):
    """A clean error leaves no child killed mid-work (it could hold shared state): the others end on their own."""
    lost: list[bool] = []

    def work(n: int) -> int:
        if n == 0:
            raise ValueError("broken member")
        time.sleep(0.5)
        (tmp_path / "finished").touch()
        return n

    with pytest.raises(ValueError, match="broken member"):
        forked_map(work, [0, 1], on_lost=lambda: lost.append(True))
    assert (tmp_path / "finished").exists() and lost == []


def test_a_worker_killed_while_it_holds_pixels_or_waits_for_them_leaves_no_one_waiting_for_good():
    """Worker 1 dies holding the whole budget, worker 2 is killed while queued behind it: the parent's decode that
    waited behind both goes through, and the next extract gets a fresh budget."""
    limit = 1000
    budget = pixel_budget(limit)

    def work(n: int) -> None:
        if n == 0:
            with budget.hold(limit):
                assert wait_for(lambda: budget._counters[1] >= 3)  # worker 2 and the parent queued behind it
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            assert wait_for(lambda: budget.used == limit)
            with budget.hold(10):
                pass

    got = threading.Event()

    def parent_decode() -> None:
        assert wait_for(lambda: budget._counters[1] >= 2)  # behind worker 1, beside worker 2
        with budget.hold(10):
            got.set()

    waiting = threading.Thread(target=parent_decode, daemon=True)
    waiting.start()
    with pytest.raises(WorkerDied, match="worker 1 of 2 was killed by signal 9"):
        forked_map(work, [0, 1], on_lost=budget.abandon)
    assert got.wait(10), "the parent's decode is still waiting on a dead worker's pixels"
    waiting.join()
    fresh = pixel_budget(limit)
    assert fresh is not budget and fresh.used == 0
    with fresh.hold(limit):
        assert fresh.used == limit
