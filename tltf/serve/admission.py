"""Admission control and deadlines: what a model's batcher takes in, and how long a request may wait for it.

**Admission.** Each model admits at most ``max_requests`` requests at once (waiting for a batch or running in
one) holding at most ``max_bytes`` bytes of input between them. A request beyond either bound is refused at once
with a 503 and ``Retry-After`` (the seconds the model needs to work through what it holds, at the rate measured
when it was loaded), as Triton refuses work beyond its ``max_queue_size``: a client told to come back soon costs
the server nothing, a client left queued costs it memory and every later client latency. A request larger than
``max_bytes`` on its own is still admitted when the model holds nothing (the body limit bounds it already).

**Deadlines.** A request may carry a deadline: Triton's ``timeout`` request parameter (microseconds), or the
server's ``--request-timeout-ms``. Past it, the request is taken out of the queue, never run, and answered
``504 Gateway Timeout``: the server could not answer within the time the client gave it (gRPC's
``DEADLINE_EXCEEDED``, which the usual HTTP mappings send as 504). ``408 Request Timeout`` is kept for the other
case, a client too slow to send its request (:mod:`tltf.serve.limits`, :mod:`tltf.serve.connections`).

The default bound (``--max-queue``) is measured per model at load time: the rows one onnxruntime call of
``max_batch`` rows gets through in a second (:attr:`tltf.serve.models.ServedModel.rows_per_s`), so that a request
admitted at the back of a full queue of one-row requests waits about :data:`QUEUE_SECONDS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tltf.serve.errors import ApiError

#: a full queue holds about this many seconds of work (at the model's measured rows per second)
QUEUE_SECONDS = 1.0
#: the bound on queued requests when it cannot be measured (a graph with open dimensions besides the batch)
DEFAULT_MAX_REQUESTS = 256
MIN_REQUESTS, MAX_REQUESTS = 8, 4096
#: bytes of input queued per model by default: this many megabytes, or four bodies at the body limit if more
DEFAULT_MAX_MB = 256


class QueueFull(ApiError):
    """503 with ``Retry-After``: the model holds as many requests (or bytes) as it admits."""

    def __init__(self, model: str, what: str, retry_after_s: int, reason: str):
        super().__init__(503, f"model {model!r} is busy: {what}; retry after {retry_after_s} s",
                         {"Retry-After": str(retry_after_s)})
        self.reason = reason


class DeadlineExceeded(ApiError):
    """504: the request's deadline passed before it could run; it was never run."""

    reason = "deadline"

    def __init__(self, model: str, timeout_s: float):
        super().__init__(504, f"model {model!r}: the request's deadline ({timeout_s * 1000:g} ms) passed before it "
                              "could run; it was not run")


def default_max_requests(rows_per_s: float | None, max_batch: int) -> int:
    """``--max-queue``'s default for a model: about :data:`QUEUE_SECONDS` of work at its measured rate, at least
    two batches."""
    if not rows_per_s:
        return DEFAULT_MAX_REQUESTS
    return int(min(MAX_REQUESTS, max(MIN_REQUESTS, 2 * max_batch, math.ceil(rows_per_s * QUEUE_SECONDS))))


def default_max_bytes(max_body_bytes: int) -> int:
    return max(DEFAULT_MAX_MB << 20, 4 * int(max_body_bytes))


@dataclass
class Admission:
    """One model's bounds; :meth:`check` raises :class:`QueueFull` for a request that would pass them."""

    model: str
    max_requests: int
    max_bytes: int
    rows_per_s: float | None = None

    def check(self, held_requests: int, held_bytes: int, held_rows: int, nbytes: int) -> None:
        if held_requests >= self.max_requests:
            raise QueueFull(self.model, f"{held_requests} requests queued (--max-queue {self.max_requests})",
                            self.retry_after(held_rows), "queue_full")
        if held_requests and held_bytes + nbytes > self.max_bytes:
            raise QueueFull(self.model, f"{held_bytes:,} bytes queued, this request adds {nbytes:,} (--max-queue-mb "
                                        f"{self.max_bytes / (1 << 20):g})", self.retry_after(held_rows), "queue_bytes")

    def retry_after(self, held_rows: int) -> int:
        """Whole seconds (at least 1, as ``Retry-After`` counts them) to work through ``held_rows``."""
        if not self.rows_per_s:
            return 1
        return max(1, math.ceil(held_rows / self.rows_per_s))


def timeout_of(parameters: dict, default_s: float | None) -> float | None:
    """A request's timeout in seconds: Triton's ``timeout`` request parameter (microseconds, > 0) or
    ``default_s`` (``None``: no deadline); anything else in ``timeout`` is a 400."""
    value = parameters.get("timeout")
    if value is None:
        return default_s
    if type(value) is not int or value <= 0:
        raise ApiError(400, f"parameter 'timeout' {str(value)[:30]!r}: must be a positive integer (microseconds)")
    return min(value, 10 ** 12) / 1e6  # beyond ~11 days it is no deadline at all (and no float overflow)
