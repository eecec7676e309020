"""AsyncLLM: the engine behind an asyncio server. One background thread owns the LLMEngine and steps it; asyncio
callers talk to it through a thread-safe inbox (new requests, aborts) and get their tokens back through per-request
asyncio.Queues fed with `loop.call_soon_threadsafe`.

    llm = AsyncLLM.from_dir("checkpoints/small")
    async for delta in llm.generate(prompt_ids, SamplingParams(max_tokens=64), request_id="r1"):
        send(delta.text_delta)           # delta.finished / finish_reason / ttft_s on the last one

Cancelling the consuming task (the client went away) aborts the request; the engine thread frees its KV blocks
at the start of its next iteration (within one step).

Engine death: an exception outside one step (adding, aborting, publishing, the stats) or MAX_FAILED_STEPS failed
steps in a row ends the engine thread. Every open stream then ends with EngineDeadError (an UnavailableError),
`generate` raises it at once from then on, and `on_death(exc)` tells the owner. The engine is not restarted in
this process: its KV cache and, on a GPU, its CUDA context may be left in any state (a device-side assert poisons
the context for good), so the owner (the server) reports NOT_SERVING and exits non-zero for its supervisor to
restart it, as vLLM's server does when its engine core dies. The model forward releases the GIL, so the event loop keeps
serving while the engine computes.

What runs where:
- the caller's thread (the event loop): validating and building the request (`LLMEngine.make_request`, pure), the
  admission check, and reading deltas off the request's asyncio.Queue;
- the engine thread ("llm-engine"): everything that touches the engine's state: queueing adds and applying aborts
  from the inbox, `LLMEngine.step` (schedule, forward, sample, detokenise, stop checks, free blocks), publishing
  the deltas to the streams, and the stats snapshot that `metrics()` reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch

from common.errors import InvalidArgumentError, PqragError, UnavailableError
from llm.config import ModelConfig
from llm.engine import LLMEngine
from llm.generation_config import GenerationConfig
from llm.outputs import StreamDelta
from llm.request import RequestGroup
from llm.sampler import SamplingParams
from llm.tokenizer import Tokenizer

_IDLE_WAIT_S = 0.5  # how long the idle engine thread blocks on its inbox before re-checking for shutdown
MAX_FAILED_STEPS = 3  # failed steps in a row that mean the engine itself is broken, not one batch

log = logging.getLogger("pqrag.engine")


class EngineDeadError(UnavailableError):
    """The generator's engine thread died: this answer cannot finish here (module docstring)."""


class _Stream:
    """The asyncio side of one request: its loop and queue (items: StreamDelta or an Exception)."""

    __slots__ = ("loop", "queue", "num_open")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int):
        self.loop = loop
        self.queue: asyncio.Queue[StreamDelta | BaseException] = asyncio.Queue()
        self.num_open = n  # sequences not yet finished

    def put(self, item: StreamDelta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            pass


class AsyncLLM:
    """An LLMEngine stepped by one background thread, for asyncio callers (module docstring)."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._streams: dict[str, _Stream] = {}  # request id -> stream; engine thread and callers, under _lock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stats: dict[str, Any] = engine.stats()
        self._errors = 0
        self._failed_steps = 0  # in a row
        self.dead: BaseException | None = None  # why the engine thread died; None while it is alive or not started
        # Called once, on the engine thread, when it dies (the server flips its health and exits).
        self.on_death: Callable[[BaseException], None] | None = None

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, **options: Any) -> AsyncLLM:
        """options: LLMEngine.from_dir's: device, dtype, config, and EngineConfig fields (kv_cache_memory,
        max_num_seqs, ...); an unknown one raises InvalidArgumentError."""
        return cls(LLMEngine.from_dir(model_dir, **options))

    # ---- properties the server reads ------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.engine.tokenizer

    @property
    def config(self) -> ModelConfig:
        return self.engine.model_config

    @property
    def generation_config(self) -> GenerationConfig:
        """The checkpoint's eos ids and default sampling (generation_config.json)."""
        return self.engine.generation_config

    @property
    def max_model_len(self) -> int:
        """The window a request (prompt + max_tokens) must fit: EngineConfig.max_model_len, settled for the model."""
        return self.engine.max_model_len

    def metrics(self) -> dict[str, Any]:
        """Engine stats as of the last step (running, waiting, kv_usage, prefix_cache_hit_rate, preemptions, ...)."""
        with self._lock:
            out = dict(self._stats)
            out["num_streams"] = len(self._streams)
        out["num_inbox"] = self._inbox.qsize()
        out["engine_errors"] = self._errors
        return out

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running or self.dead is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; unfinished requests are aborted and their streams end with "abort"."""
        self._stop.set()
        self._inbox.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---- requests -------------------------------------------------------------------------------------------------
    async def generate(
        self, prompt_token_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[StreamDelta]:
        """Stream the deltas of one request. Raises InvalidArgumentError (invalid / too long for the context) or
        QueueFullError before anything is yielded. For n > 1 the deltas of the samples interleave (see .index);
        the iterator ends when all of them finished."""
        self._check_alive()
        # Validation is pure and thread-safe: errors surface in the caller, and the engine thread only queues.
        group = self.engine.make_request(request_id, prompt_token_ids, params)
        stream = _Stream(asyncio.get_running_loop(), group.params.n)
        with self._lock:
            self._check_alive()  # under the lock: _die either sees this stream or has set `dead` before
            if request_id in self._streams:
                raise InvalidArgumentError(f"request id {request_id!r} is already in use")
            # Admission is checked here so the caller gets the error now; the engine re-checks (a race between
            # callers on several threads can only overshoot by a few, and then the stream gets the error).
            self.engine.scheduler.check_queue(num_pending=self._inbox.qsize())
            self._streams[request_id] = stream
        self.start()
        self._inbox.put(("add", group))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finished:
                    stream.num_open -= 1
                    # an abort ends the whole request (for n > 1 possibly before the samples were even forked)
                    finished = stream.num_open == 0 or item.finish_reason == "abort"
                yield item
                if finished:
                    return
        finally:
            # Cancelled (client gone), closed early, or an error: abort so the blocks are freed at once.
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self._inbox.put(("abort", request_id))

    def _check_alive(self) -> None:
        if self.dead is not None:
            raise EngineDeadError(
                f"the generator engine stopped ({type(self.dead).__name__}); this server is restarting, retry on "
                "another or in a moment"
            )

    def abort(self, request_id: str) -> None:
        """Abort a request from any thread; its stream ends with finish_reason "abort"."""
        self._inbox.put(("abort", request_id))

    # ---- the engine thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():  # grad mode is thread-local: set it in the thread that runs the model
                self._loop()
        except BaseException as exc:  # outside one request's step: the engine is broken (module docstring)
            self._die(exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._drain(block=not self.engine.has_unfinished_requests())
            if self._stop.is_set():
                break
            if not self.engine.has_unfinished_requests():
                continue
            try:
                out = self.engine.step()
            except Exception as e:  # a failed step fails its requests, not the server ...
                self._errors += 1
                self._failed_steps += 1
                self._fail_all(e)
                if self._failed_steps >= MAX_FAILED_STEPS:  # ... unless every step fails
                    raise RuntimeError(f"{MAX_FAILED_STEPS} engine steps failed in a row; the last: {e!r}") from e
                continue
            self._failed_steps = 0
            self._publish(out.deltas)
            with self._lock:
                self._stats = self.engine.stats()
        self._abort_all()

    def _die(self, exc: BaseException) -> None:
        log.critical("the generator engine thread died", exc_info=exc)
        with self._lock:
            self.dead = exc
            streams = list(self._streams.values())
        for s in streams:
            try:
                self._check_alive()
            except EngineDeadError as err:
                s.put(err)
        if self.on_death is not None:
            try:
                self.on_death(exc)
            except Exception:
                log.exception("on_death failed")

    def _drain(self, block: bool) -> None:
        """Apply every queued add/abort; when idle, wait for the first one."""
        try:
            item = self._inbox.get(timeout=_IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, arg = item
            if kind == "add":
                self._add(arg)
            elif kind == "abort":
                self._publish(self.engine.abort_stream(arg))
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            self._stats = self.engine.stats()

    def _add(self, group: RequestGroup) -> None:
        with self._lock:
            stream = self._streams.get(group.request_id)
        if stream is None:  # cancelled before the engine saw it
            return
        try:
            self.engine.add(group)
        except PqragError as e:  # queue full (a race between callers) or an id in use: the request's error
            stream.put(e)

    def _publish(self, deltas: list[StreamDelta]) -> None:
        if not deltas:
            return
        with self._lock:
            streams = {d.request_id: self._streams.get(d.request_id) for d in deltas}
        for d in deltas:
            s = streams[d.request_id]
            if s is not None:
                s.put(d)

    def _fail_all(self, error: Exception) -> None:
        """After a failed step the engine's state of the batch is unknown: abort every request it holds."""
        for rid in list(self.engine.scheduler.groups):
            self.engine.abort_request(rid)
            with self._lock:
                s = self._streams.get(rid)
            if s is not None:
                s.put(RuntimeError(f"engine step failed: {error!r}"))
        # Blocks of the failed step were registered in the prefix cache before being written: forget them all.
        self.engine.kv.reset_prefix_cache()

    def _abort_all(self) -> None:
        for rid in list(self.engine.scheduler.groups):
            self._publish(self.engine.abort_stream(rid))
