"""``tltf bench``: onnxruntime vs Keras latency (p50/p90/p99) and throughput per batch size.

- :func:`run_bench` (:mod:`tltf.bench.runner`): the measurement, returning ``{"results": [...], ...}``.
- :mod:`tltf.bench.report`: the rich table, the JSON file and the PNG plot.
"""

from __future__ import annotations

__all__ = ["Timing", "parse_batch_sizes", "run_bench"]


def __getattr__(name):
    if name in __all__:
        from tltf.bench import runner

        return getattr(runner, name)
    raise AttributeError(name)
