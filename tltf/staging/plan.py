"""Stage plans: which blocks are trainable, for how many epochs, at which learning rates.

A :class:`StagePlan` is a list of :class:`Stage` s. Each stage unfreezes the top ``unfreeze`` blocks of the backbone
(``0`` = head only, ``"all"`` = everything, or a block name = that block and all above it) and trains for ``epochs``
epochs at ``learning_rate`` (the head's rate). ``discriminative`` spreads rates over the unfrozen blocks the way
fastai's ``slice(lo, hi)`` does: the lowest unfrozen block gets ``learning_rate * discriminative``, blocks above it
geometrically more, the head ``learning_rate``.

Plans come from presets (:func:`preset`: ``feature``, ``finetune``, ``gradual``) or from YAML::

    stages:
      - {name: head, epochs: 2, unfreeze: 0, learning_rate: 1.0e-3}
      - {name: top, epochs: 2, unfreeze: 2, learning_rate: 3.0e-4, discriminative: 0.3}
      - {name: all, epochs: 2, unfreeze: all, learning_rate: 1.0e-4, discriminative: 0.1}

>>> plan = preset("gradual", epochs=8, learning_rate=1e-3, num_blocks=19)
>>> [(s.name, s.epochs, s.unfreeze) for s in plan.stages]
[('head', 2, 0), ('top1', 2, 1), ('top10', 2, 10), ('all', 2, 'all')]
>>> plan.stage_index_at(5)
2
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


from tltf.errors import TltfError

STAGE_KEYS = {"name", "epochs", "unfreeze", "learning_rate", "discriminative"}


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    unfreeze: int | str = 0
    learning_rate: float = 1e-3
    discriminative: float = 1.0

    def __post_init__(self):
        if self.epochs < 1:
            raise TltfError(f"stage {self.name}: epochs must be >= 1, got {self.epochs}")
        if not 0 < self.learning_rate <= 10:  # also refuses nan (every comparison with it is False)
            raise TltfError(f"stage {self.name}: learning_rate must be in (0, 10], got {self.learning_rate}")
        if not 0 < self.discriminative <= 1:
            raise TltfError(f"stage {self.name}: discriminative must be in (0, 1], got {self.discriminative}")
        if isinstance(self.unfreeze, int) and self.unfreeze < 0:
            raise TltfError(f"stage {self.name}: unfreeze must be >= 0, 'all' or a block name")


@dataclass
class StagePlan:
    stages: list[Stage] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def boundaries(self) -> list[int]:
        """First epoch of each stage."""
        out, start = [], 0
        for s in self.stages:
            out.append(start)
            start += s.epochs
        return out

    def stage_index_at(self, epoch: int) -> int:
        """Index of the stage that trains epoch ``epoch`` (0-based); past the end, the last stage."""
        index = 0
        for i, start in enumerate(self.boundaries()):
            if epoch >= start:
                index = i
        return index

    def scaled(self, epochs: int) -> "StagePlan":
        """The same plan with its epochs rescaled to a total budget of ``epochs`` (each stage keeps >= 1)."""
        if epochs == self.epochs:
            return self
        if epochs < len(self.stages):
            raise TltfError(f"--epochs {epochs}: the plan has {len(self.stages)} stages and needs at least that many")
        raw = [s.epochs * epochs / self.epochs for s in self.stages]
        counts = [max(1, math.floor(r)) for r in raw]
        order = sorted(range(len(raw)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
        i = 0
        while sum(counts) < epochs:
            counts[order[i % len(order)]] += 1
            i += 1
        while sum(counts) > epochs:
            j = max(range(len(counts)), key=lambda k: counts[k])
            counts[j] -= 1
        return StagePlan([Stage(**{**asdict(s), "epochs": c}) for s, c in zip(self.stages, counts)])

    def truncated(self, epochs: int) -> "StagePlan":
        """The plan's first ``epochs`` epochs: later stages dropped, the last one kept cut short."""
        if epochs < 1:
            raise TltfError(f"truncated plan: epochs must be >= 1, got {epochs}")
        stages, left = [], epochs
        for s in self.stages:
            if left <= 0:
                break
            stages.append(Stage(**{**asdict(s), "epochs": min(s.epochs, left)}))
            left -= s.epochs
        return StagePlan(stages)

    def to_dict(self) -> dict:
        return {"stages": [asdict(s) for s in self.stages]}

    @classmethod
    def from_dict(cls, data, source: str = "plan") -> "StagePlan":
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
            raise TltfError(f"{source}: expected a mapping with a non-empty list under 'stages'")
        unknown = set(data) - {"stages"}
        if unknown:
            raise TltfError(f"{source}: unknown key {sorted(unknown)[0]!r} (expected 'stages')")
        stages = []
        for i, raw in enumerate(data["stages"]):
            if not isinstance(raw, dict):
                raise TltfError(f"{source}: stage {i + 1} must be a mapping")
            bad = set(raw) - STAGE_KEYS
            if bad:
                raise TltfError(f"{source}: stage {i + 1}: unknown key {sorted(bad)[0]!r} "
                                f"(allowed: {', '.join(sorted(STAGE_KEYS))})")
            if "epochs" not in raw:
                raise TltfError(f"{source}: stage {i + 1}: 'epochs' is required")
            try:
                stages.append(Stage(name=str(raw.get("name", f"stage{i + 1}")), epochs=int(raw["epochs"]),
                                    unfreeze=_unfreeze(raw.get("unfreeze", 0)),
                                    learning_rate=float(raw.get("learning_rate", 1e-3)),
                                    discriminative=float(raw.get("discriminative", 1.0))))
            except (TypeError, ValueError) as e:
                raise TltfError(f"{source}: stage {i + 1}: {e}") from None
        return cls(stages)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "StagePlan":
        from tltf.safe_yaml import read_yaml

        path = Path(path)
        return cls.from_dict(read_yaml(path, f"--plan {path}"), source=str(path))


def _unfreeze(value) -> int | str:
    if isinstance(value, bool):
        raise ValueError("unfreeze must be an integer, 'all' or a block name")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def preset(kind: str, epochs: int, learning_rate: float, num_blocks: int) -> StagePlan:
    """The built-in plans.

    - ``feature``: the head only, for all ``epochs``.
    - ``finetune``: the head, then everything at a tenth of the rate.
    - ``gradual``: the head, the top block, the top half, everything; the rate falls tenfold over the stages and
      is spread over blocks (lowest unfrozen block at a tenth of the stage's rate).
    - ``scratch``: everything trainable from the first epoch at one rate: the from-scratch baseline (with
      ``--weights none``), where there is nothing pretrained to protect.
    - ``prototypes``: nothing to train (the head is imprinted, :mod:`tltf.fewshot.method`), or with ``epochs``
      everything at a tenth of the rate (fine-tuning after imprinting).
    """
    if kind == "prototypes":
        return StagePlan([Stage("all", epochs, "all", learning_rate / 10)] if epochs > 0 else [])
    if epochs < 1:
        raise TltfError(f"--epochs must be >= 1, got {epochs}")
    lr = learning_rate
    if kind == "feature":
        return StagePlan([Stage("head", epochs, 0, lr)])
    if kind == "scratch":
        return StagePlan([Stage("all", epochs, "all", lr)])
    if kind == "finetune":
        if epochs == 1:
            return StagePlan([Stage("head", 1, 0, lr)])
        head, rest = _split(epochs, 2)
        return StagePlan([Stage("head", head, 0, lr), Stage("all", rest, "all", lr / 10)])
    if kind == "gradual":
        counts = sorted({c for c in (1, max(2, round(num_blocks / 2))) if c < num_blocks})
        unfreezes: list[int | str] = [0, *counts, "all"]
        if epochs < len(unfreezes):
            unfreezes = [0] + unfreezes[len(unfreezes) - (epochs - 1):] if epochs > 1 else [0]
        n = len(unfreezes)
        stages = []
        for k, (u, e) in enumerate(zip(unfreezes, _split(epochs, n))):
            name = "head" if u == 0 else "all" if u == "all" else f"top{u}"
            rate = lr * 10 ** (-k / (n - 1)) if n > 1 else lr
            stages.append(Stage(name, e, u, rate, 1.0 if u in (0, 1) else 0.1))
        return StagePlan(stages)
    raise TltfError(f"--stage {kind}: unknown stage plan (feature, finetune, gradual, scratch, prototypes)")
