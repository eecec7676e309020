"""Background (re)training of one collection's index: one at a time, while searches and writes go on.

    trainer = BackgroundTrainer("notes")
    trainer.start(work)        # work(cancelled) runs on the trainer's thread; False when stopped
    trainer.running            # a training is in progress
    trainer.wait(timeout)      # True once none is
    trainer.stop()             # ask the running work to cancel (it polls `cancelled`), wait for it, refuse new work

The owner (Collection) hands over work that tunes without its lock and installs under it (vector_index.py), so the
lock is held for a moment at each end, never during k-means. The thread runs faiss on one core (faiss_backend.
single_threaded), so a training never takes the cores searches need. A start() while work runs is kept and runs next (the
running work may itself ask for another round); queued work replaces what was queued before, so it should check
whether it is still needed when it starts (Collection's does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from retrieval.faiss_backend import single_threaded
from retrieval.tuning import TrainingCancelled

log = logging.getLogger("pqrag.collection")

Work = Callable[[Callable[[], bool]], None]


class BackgroundTrainer:
    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._next: Work | None = None

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def start(self, work: Work) -> bool:
        """Run `work` on the trainer's thread (after the work in progress, if any). False once stopped."""
        with self._lock:
            if self._cancel.is_set():
                return False
            if self.running:
                self._next = work
                return True
            self._thread = threading.Thread(
                target=self._run, args=(work,), name=f"pqrag-train-{self.name}", daemon=True
            )
            self._thread.start()
            return True

    def _run(self, work: Work | None) -> None:
        single_threaded()  # a background job: one core for faiss, the others stay with the searches
        while work is not None:
            try:
                work(self._cancel.is_set)
            except TrainingCancelled:
                log.info("collection %s: index training cancelled", self.name)
            except Exception:  # the index keeps serving as it was; the next due training tries again
                log.exception("collection %s: index training failed", self.name)
            with self._lock:
                work, self._next = self._next, None
                if work is None:
                    self._thread = None
                    return

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the work in progress (and any queued after it); True when none is left."""
        t = self._thread
        while t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                return False
            t = self._thread
        return not self.running or self._thread is threading.current_thread()

    def stop(self) -> None:
        """Cancel the work in progress, wait for it, and refuse new work. The caller must not hold a lock the work
        takes (Collection calls this before taking its own)."""
        with self._lock:
            self._cancel.set()
            self._next = None
        self.wait()
