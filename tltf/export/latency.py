"""Timing forward passes one by one: :class:`Timing`, :func:`measure`, and :func:`compare_latency` (the quick
verdict ``tltf export --precision int8`` gives on whether the int8 file is faster than its fp32 original here).

``tltf bench`` (:mod:`tltf.bench.runner`) measures with the same functions; this module lives under ``export`` so
that export never imports bench.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Timing:
    """How long to measure each (runtime, batch size)."""

    warmup: int = 10
    min_iters: int = 10
    max_iters: int = 300
    min_time_s: float = 3.0


def measure(step: Callable[[], object], timing: Timing, advance: Callable[[int], None] | None = None) -> list[float]:
    """Warm up, then time ``step()`` calls one by one; ``advance(n)`` reports progress."""
    for _ in range(timing.warmup):
        step()
    if advance:
        advance(timing.warmup)
    times = []
    start = time.perf_counter()
    while len(times) < timing.max_iters and (len(times) < timing.min_iters
                                              or time.perf_counter() - start < timing.min_time_s):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if advance:
            advance(1)
    return times


def compare_latency(paths, batch_size: int = 1, rounds: int = 3, seconds: float = 0.4, seed: int = 0) -> list[float]:
    """p50 latency (ms) of each ONNX file in ``paths`` at ``batch_size`` on this CPU, timed in interleaved rounds
    (so a burst of load hits all alike; the median of the rounds' p50 counts). For quick verdicts such as
    "is the int8 file faster than the fp32 one here"; ``tltf.bench.runner.run_bench`` is the full
    benchmark."""
    from tltf.runtime.onnx_model import OnnxModel

    models = [OnnxModel(p) for p in paths]
    h, w = models[0].image_size
    pixels = np.random.default_rng(seed).uniform(0, 255, (batch_size, h, w, 3)).astype(np.float32)
    steps = [(lambda m=m, x=np.ascontiguousarray(pixels, m.input_dtype): m.run(x)) for m in models]
    timing = Timing(warmup=3, min_iters=5, max_iters=1000, min_time_s=seconds)
    p50 = [[] for _ in models]
    for _ in range(rounds):
        for i, step in enumerate(steps):
            p50[i].append(1000 * float(np.median(measure(step, timing))))
    return [float(np.median(v)) for v in p50]
