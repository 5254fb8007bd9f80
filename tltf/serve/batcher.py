"""Dynamic batching: concurrent requests for one model gathered into one onnxruntime call, results sent back.

Each model has a :class:`Batcher`: an asyncio task that takes the oldest waiting request and gathers more until
the batch holds ``max_batch`` rows (a request with a batch dimension of 8 counts 8) or the oldest request has
waited ``max_delay`` seconds, then runs the concatenated inputs in a worker thread (one per model, so the event
loop keeps reading requests meanwhile) and hands each caller its own rows of every output. While one batch runs
the next one fills up, so under load batches form without waiting at all.

As in Triton, the delay is paid by a request that finds no company: a lone client waits ``max_delay`` for each
answer. ``max_delay=0`` batches only what is already queued when the worker is free (no waiting, batches still
form under load); ``max_batch=1`` turns batching off. A request larger than ``max_batch`` rows runs alone.

Only requests whose inputs agree in everything but the batch dimension (shape and dtype) share a run; others
wait for the next. If a batch fails (onnxruntime refuses it), its requests are re-run one by one, so one bad
request cannot fail the others.

What a batcher holds is bounded (:class:`tltf.serve.admission.Admission`: requests and bytes, waiting or running;
beyond it a 503 at once). A caller that stops waiting -- its deadline passed (504), its client went away (the app
cancels it) -- leaves at once: it is taken out of the queue (or out of the batch being gathered), its slot is
free, and it is never run; if its batch is already running, its rows are dropped when it ends. Each caller gets
its own future, so rows only ever go back to the caller who sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tltf.serve.admission import Admission, DeadlineExceeded
from tltf.serve.errors import ApiError

Arrays = dict[str, np.ndarray]


@dataclass(eq=False)  # compared by identity: the queue removes this very request
class _Pending:
    inputs: Arrays = field(repr=False)
    rows: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # time.monotonic() past which it must not run
    timeout: float = 0.0  # the seconds it was given (for the message)
    nbytes: int = 0
    running: bool = False  # handed to the worker thread: its inputs stay until the run ends

    @property
    def key(self) -> tuple:
        """What must match to share a run: per input, its name, dtype and shape past the batch dimension."""
        return tuple((name, a.dtype.str, a.shape[1:]) for name, a in self.inputs.items())


class Batcher:
    """Gathers requests for ``run`` (inputs -> outputs, each with a leading batch dimension) into batches.

    ``on_batch(rows, requests, seconds)`` is called after each run (for metrics); ``batchable=False`` (a graph
    with a fixed batch dimension) runs each request alone; ``admission`` bounds what it holds (none: unbounded).
    """

    def __init__(self, run: Callable[[Arrays], Arrays], max_batch: int = 32, max_delay: float = 0.005,
                 batchable: bool = True, on_batch: Callable[[int, int, float], None] | None = None,
                 name: str = "model", admission: Admission | None = None):
        self.run = run
        self.admission = admission
        #: requests (and their rows and input bytes) admitted and not yet answered: waiting or running
        self.held_requests = 0
        self.held_rows = 0
        self.held_bytes = 0
        #: requests in the batch running now
        self.running_requests = 0
        self.max_batch = max(1, int(max_batch)) if batchable else 1
        self.max_delay = max(0.0, float(max_delay))
        self.on_batch = on_batch
        self.name = name
        self._queue: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the gathering task (in the running event loop) and the model's worker thread."""
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tltf-serve-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._gather_forever(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop gathering (after the server has answered its in-flight requests) and the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(ApiError(503, "the server is shutting down"))
        self._queue.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- callers -----------------------------------------------------------------------------------------------

    async def submit(self, inputs: Arrays, rows: int, deadline: float | None = None, timeout: float | None = None
                     ) -> Arrays:
        """Queue one request (``rows`` = its batch dimension) and wait for its own rows of every output.

        A 503 :class:`tltf.serve.admission.QueueFull` at once if the model holds all it admits; a 504
        :class:`DeadlineExceeded` once ``deadline`` (``time.monotonic()``; ``timeout`` seconds is only for the
        message) passes before the request ran. Cancelling the caller takes the request out as well."""
        if not self.running:
            raise ApiError(503, f"model {self.name!r} is not ready")
        nbytes = sum(int(a.nbytes) for a in inputs.values())
        if self.admission is not None:
            self.admission.check(self.held_requests, self.held_bytes, self.held_rows, nbytes)
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded(self.name, timeout or 0.0)
        item = _Pending(inputs, int(rows), asyncio.get_running_loop().create_future(), deadline=deadline,
                        timeout=timeout or 0.0, nbytes=nbytes)
        self.held_requests += 1
        self.held_rows += item.rows
        self.held_bytes += nbytes
        self._queue.append(item)
        self._wake_up()
        try:
            if deadline is None:
                return await item.future
            try:
                return await asyncio.wait_for(item.future, deadline - time.monotonic())
            except asyncio.TimeoutError:
                raise DeadlineExceeded(self.name, timeout or 0.0) from None
        finally:  # answered, timed out or cancelled: the slot is free and a queued request leaves the queue
            self.held_requests -= 1
            self.held_rows -= item.rows
            self.held_bytes -= nbytes
            if not item.future.done():
                item.future.cancel()
            if not item.running and item in self._queue:  # (not remove() + ValueError: its message is a repr)
                self._queue.remove(item)
            if not item.running:
                item.inputs = {}  # a batch being gathered may still list it: let the arrays go now

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- the gathering loop ------------------------------------------------------------------------------------

    async def _gather_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._still_wanted(await self._next_batch())
            if not batch:
                continue
            for item in batch:
                item.running = True
            self.running_requests = len(batch)
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as e:  # not expected: _run_batch returns exceptions; never let the loop die
                results = [ApiError(500, f"model {self.name!r}: batch failed ({type(e).__name__}: {e})")] * len(batch)
            finally:
                self.running_requests = 0
            for item, result in zip(batch, results):
                if item.future.done():  # the caller went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _still_wanted(self, batch: list[_Pending]) -> list[_Pending]:
        """The requests of a gathered batch whose callers still wait and whose deadlines have not passed (those
        are answered 504 here: they must not run)."""
        now = time.monotonic()
        wanted = []
        for item in batch:
            if item.future.done():
                continue
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceeded(self.name, item.timeout))
                continue
            wanted.append(item)
        return wanted

    async def _next_batch(self) -> list[_Pending]:
        """The oldest request and those that can join it: up to ``max_batch`` rows, waiting at most until the
        oldest has waited ``max_delay``."""
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            first = self._queue.popleft()
            if not first.future.done():
                break
        batch, rows = [first], first.rows
        if rows >= self.max_batch:
            return batch
        key, skipped = first.key, []
        deadline = first.arrived + self.max_delay
        while rows < self.max_batch:
            if self._queue:
                item = self._queue.popleft()
                if item.future.done():
                    continue
                if item.key != key:
                    skipped.append(item)
                    continue
                if rows + item.rows > self.max_batch:
                    skipped.append(item)
                    break
                batch.append(item)
                rows += item.rows
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                break
        self._queue.extendleft(reversed(skipped))  # they keep their place at the front
        return batch

    def _run_batch(self, batch: list[_Pending]) -> list[Arrays | BaseException]:
        """In the worker thread: one run for the whole batch, split back per request; on failure, one run each."""
        start = time.perf_counter()
        try:
            results = self._run_together(batch)
        except Exception as e:
            results = [self._run_alone(item) for item in batch] if len(batch) > 1 else [e]
        if self.on_batch is not None:
            self.on_batch(sum(item.rows for item in batch), len(batch), time.perf_counter() - start)
        return results

    def _run_together(self, batch: list[_Pending]) -> list[Arrays]:
        if len(batch) == 1:
            return [self.run(batch[0].inputs)]
        feeds = {name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs}
        outputs = self.run(feeds)
        total = sum(item.rows for item in batch)
        bad = [name for name, value in outputs.items() if value.ndim == 0 or value.shape[0] != total]
        if bad:
            raise ApiError(500, f"model {self.name!r}: output {bad[0]!r} has no batch dimension to split")
        bounds = np.cumsum([item.rows for item in batch])[:-1]
        pieces = {name: np.split(value, bounds) for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(batch))]

    def _run_alone(self, item: _Pending) -> Arrays | BaseException:
        try:
            return self.run(item.inputs)
        except Exception as e:
            return e
