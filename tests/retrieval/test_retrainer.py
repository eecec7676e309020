"""BackgroundTrainer: one piece of work at a time on its own thread, the next one queued, failures logged without
killing the thread, and stop() cancelling the work in progress and refusing more."""

import logging
import threading

from retrieval.retrainer import BackgroundTrainer
from retrieval.tuning import TrainingCancelled


def test_work_runs_in_order_one_at_a_time():
    t = BackgroundTrainer("c")
    gate, ran = threading.Event(), []

    def first(cancelled):
        assert gate.wait(10)
        ran.append("first")

    assert t.start(first) and t.running
    assert t.start(lambda cancelled: ran.append("second"))  # queued behind the first
    assert not t.wait(0.05)  # still busy
    gate.set()
    assert t.wait(10) and not t.running and ran == ["first", "second"]


def test_a_failure_is_logged_and_the_next_work_runs(caplog):
    t = BackgroundTrainer("c")

    def boom(cancelled):
        raise RuntimeError("kmeans exploded")

    t.start(boom)
    assert t.wait(10)
    assert "index training failed" in caplog.text and "kmeans exploded" in caplog.text
    ran = []
    assert t.start(lambda cancelled: ran.append(1)) and t.wait(10) and ran == [1]


def test_work_may_queue_its_own_successor():
    t = BackgroundTrainer("c")
    ran = []

    def again(cancelled):
        ran.append(len(ran))
        if len(ran) < 3:
            assert t.start(again)  # from the trainer's own thread: runs next

    t.start(again)
    assert t.wait(10) and ran == [0, 1, 2]


def test_stop_cancels_and_refuses_new_work(caplog):
    caplog.set_level(logging.INFO, "pqrag.collection")
    t = BackgroundTrainer("c")
    started = threading.Event()

    def long(cancelled):
        started.set()
        while not cancelled():
            threading.Event().wait(0.01)
        raise TrainingCancelled()

    t.start(long)
    assert started.wait(10)
    t.stop()
    assert not t.running and "cancelled" in caplog.text
    assert not t.start(lambda cancelled: None)
