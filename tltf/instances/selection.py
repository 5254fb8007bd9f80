"""How many of the most harmful training examples to drop, from their scores alone (``--select-instances auto``).

Two rules, both on scores sorted from the most harmful down (``score``: the predicted decrease of the validation
loss when an example is removed, :mod:`tltf.instances.scoring`):

- ``positive``: every example whose removal is predicted to lower the validation loss (``score > 0``). It reads
  the scores' own unit, so it needs no tuning; on MNIST with 20 % flipped labels it selects about as many
  examples as were flipped (benchmarks/instances_noisy_mnist.py).
- ``knee``: the knee of the cumulative predicted gain over the positive scores (Kneedle, Satopaa et al. 2011:
  the point farthest above the chord from the first to the last positive score), where the gain per dropped
  example falls below its average: fewer, surer drops.

``auto`` is ``positive`` (measured to recover more accuracy than ``knee``: see the README section), capped at
:data:`MAX_DROP_FRACTION` of the examples: a model so wrong that most of its data looks harmful needs a look, not
an automatic cut.
"""

from __future__ import annotations

import numpy as np

from tltf.errors import TltfError

RULES = ("auto", "positive", "knee")
#: ``auto`` never drops more than this share of the training examples
MAX_DROP_FRACTION = 0.5


def auto_drop_count(scores, rule: str = "auto", max_fraction: float = MAX_DROP_FRACTION) -> int:
    """How many of the highest ``scores`` to drop under ``rule`` (see the module docstring), at most
    ``max_fraction`` of them. Non-finite scores count as not harmful."""
    if rule not in RULES:
        raise TltfError(f"--select-instances {rule}: choose {', '.join(RULES)}")
    values = np.asarray(scores, np.float64).ravel()
    values = np.where(np.isfinite(values), values, -np.inf)
    ranked = np.sort(values)[::-1]
    positive = int(np.sum(ranked > 0))
    count = knee_count(ranked[:positive]) if rule == "knee" else positive
    return int(min(count, np.floor(max_fraction * len(values))))


def knee_count(descending: np.ndarray) -> int:
    """The knee of the cumulative sum of positive ``descending`` scores: how many lie before it (0 for none)."""
    m = len(descending)
    if m <= 2:
        return m
    gain = np.concatenate([[0.0], np.cumsum(descending)])
    chord = gain[-1] * np.arange(m + 1) / m
    return int(np.argmax(gain - chord))


def parse_selection(value) -> str | float | None:
    """``None``/``off`` -> None, ``auto`` -> "auto", a fraction in (0, 0.5] -> float; one-line error otherwise."""
    if value is None or str(value).strip().lower() in ("", "off", "none", "false"):
        return None
    text = str(value).strip().lower()
    if text in ("auto", "positive", "knee"):
        return "auto" if text == "positive" else text
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 0.5:
        raise TltfError(f"--select-instances {value}: choose auto, knee, or a fraction of the training images to "
                        "drop in (0, 0.5]")
    return fraction
