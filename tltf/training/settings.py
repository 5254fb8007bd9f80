"""The settings of a training run (:class:`FitConfig`), grouped as data, model, schedule, method and runtime.

Every field carries its group and whether it changes what a run computes (``resume``). That one flag decides both
whether an interrupted run may be resumed under new settings (:func:`changed_setting`) and whether ``tltf compare``
may reuse a finished run; a new field states it where it is declared, so no list elsewhere can forget it.

Recipes (``pipelines/*.yaml``) may be flat (``backbone: mobilenet_v2``) or grouped in sections::

    data:     {data: digits/, val_split: 0.2, augment: crop}
    model:    {backbone: cnn_small, weights: none}
    schedule: {stage: scratch, epochs: 10, learning_rate: 1.0e-3}
    method:   {adapt: dann, target_data: uci/}
    runtime:  {out: runs/digits}

A section key is only a section when its value is a mapping (``data: photos/`` is the data option itself).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from tltf.errors import TltfError

GROUPS = ("data", "model", "schedule", "method", "runtime")


def _setting(default, group: str, resume: bool = True, help: str = ""):
    """A FitConfig field: its default, its group, and whether a change forbids resuming (``resume``)."""
    meta = {"group": group, "resume": resume, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FitConfig:
    """Everything ``tltf fit`` needs; the CLI fills it from flags (and recipes)."""

    # data
    data: str = _setting("builtin:shapes", "data")
    data_dir: str | None = _setting(None, "data", resume=False)
    val_split: float = _setting(0.2, "data")
    augment: str = _setting("auto", "data", help="subset of flip,crop,color, none, or auto (see tltf.defaults)")
    cache: bool = _setting(True, "data", resume=False)
    target_data: str | None = _setting(None, "data")
    target_labels_for_eval: bool = _setting(False, "data", resume=False)
    # model
    backbone: str = _setting("mobilenet_v2", "model")
    weights: str = _setting("imagenet", "model")
    image_size: int | None = _setting(None, "model")  # None: the backbone's default
    dropout: float = _setting(0.2, "model")
    features: str = _setting("auto", "model", help="final, multilevel, or auto (multilevel for pretrained weights)")
    train_bn: bool | None = _setting(None, "model")  # None: train BN only when starting from random weights
    # schedule
    stage: str | None = _setting(None, "schedule", help="None: gradual, or scratch with --weights none")
    plan: str | dict | None = _setting(None, "schedule")  # a YAML file or an inline {"stages": [...]}
    epochs: int | None = _setting(None, "schedule")  # None: the plan's own total, or 6 for a preset
    learning_rate: float = _setting(1e-3, "schedule")
    batch_size: int = _setting(32, "schedule")
    optimizer: str = _setting("adam", "schedule")
    clipnorm: float | None = _setting(None, "schedule")
    seed: int = _setting(0, "schedule")
    refit: bool | str = _setting("auto", "schedule", help="choose epochs on the hold-out, then train on all labelled "
                                                          "images: on, off or auto (tltf.training.refit)")
    # method: what trains (tltf.training.methods) and the transfer strategies (tltf.strategies)
    adapt: str = _setting("none", "method")  # domain adaptation to target_data: dann | mmd | coral | adabn | none
    #                                            (source-only), or METHOD+adabn
    align_weight: float = _setting(1.0, "method")  # --adapt mmd|coral: the discrepancy's weight (after warm-up)
    compare_source_only: bool = _setting(False, "method", resume=False)
    # the gradient-reversal weight's ceiling; MNIST -> UCI raw folders, 10 epochs, 3 seeds: 0.3 -> 0.867, 0.6 -> 0.877,
    # 1.0 -> 0.864 (2 seeds) target accuracy (source-only 0.843)
    lambda_max: float = _setting(0.6, "method")
    gamma: float = _setting(10.0, "method")  # the lambda schedule's steepness
    anneal_lr: bool = _setting(False, "method")  # the paper's lr / (1 + 10 p) ** 0.75
    ema: str | float | None = _setting("auto", "method")  # DANN weight averaging (tltf.adapt.dann.ema_momentum)
    feature_cache: bool = _setting(True, "method", resume=False)
    freeze_until: str | None = _setting(None, "method")
    reinit_top: int = _setting(0, "method")
    l2sp: float = _setting(0.0, "method")
    lwf: float = _setting(0.0, "method")
    lwf_temperature: float = _setting(2.0, "method")
    lp_init: bool | str = _setting("auto", "method", help="LP-FT: head set by logistic regression first (auto: "
                                                          "pretrained weights, head-only first stage)")
    methods: list = _setting([], "method", help="extra plug-ins by registered name (tltf.training.register_method)")
    method_options: dict = _setting({}, "method", help="{plug-in name: {option: value}}")
    # runtime
    out: str = _setting("runs/run", "runtime", resume=False)
    distribute: str = _setting("none", "runtime")  # none | mirrored | multiworker; batch_size is per replica
    jit: bool | None = _setting(None, "runtime", resume=False)  # None: XLA on GPU, not on CPU
    precision: str = _setting("float32", "runtime", resume=False)
    tensorboard: bool = _setting(True, "runtime", resume=False)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "FitConfig":
        """A FitConfig from flat keys or grouped sections; an unknown key is a one-line error naming it."""
        return cls(**flatten(data, source))

    def group(self, name: str) -> dict:
        """The settings of one group (``data``, ``model``, ``schedule``, ``method``, ``runtime``)."""
        if name not in GROUPS:
            raise KeyError(name)
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["group"] == name}

    def grouped(self) -> dict:
        """``{group: {name: value}}``: the shape of a sectioned recipe."""
        return {name: self.group(name) for name in GROUPS}


def field_names() -> set[str]:
    return {f.name for f in fields(FitConfig)}


def resume_keys() -> tuple[str, ...]:
    """The settings that change what a run computes: they must match to resume or reuse a run."""
    return tuple(f.name for f in fields(FitConfig) if f.metadata["resume"])


def default_of(name: str):
    f = next(f for f in fields(FitConfig) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


def flatten(data: dict, source: str = "config") -> dict:
    """Flat FitConfig keys from a mapping that may hold sections (``model: {backbone: …}``)."""
    names = field_names()
    flat: dict = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in GROUPS and isinstance(value, dict):
            for inner, inner_value in value.items():
                inner = str(inner).replace("-", "_")
                if inner not in names:
                    raise TltfError(f"{source}: unknown key {inner!r} in section {key!r}")
                _put(flat, inner, inner_value, source)
        elif key in names:
            _put(flat, key, value, source)
        else:
            raise TltfError(f"{source}: unknown key {key!r}")
    return flat


def _put(flat: dict, key: str, value, source: str) -> None:
    if key in flat:
        raise TltfError(f"{source}: {key!r} is given twice (flat and in a section, or in two sections)")
    flat[key] = value


def changed_setting(previous: dict, config: FitConfig) -> tuple[str, object, object] | None:
    """The first results-changing setting whose value differs between a saved run's ``config.json`` and
    ``config``: ``(name, old, new)``, or None. A setting the saved run does not know (added to tltf later) counts
    as unchanged when ``config`` holds its default: the run behaved the same."""
    current = asdict(config)
    for key in resume_keys():
        if key not in previous:
            if current[key] != default_of(key):
                return key, None, current[key]
            continue
        if previous[key] != current[key]:
            return key, previous[key], current[key]
    return None


def load_recipe(path: str | Path) -> dict:
    """A ``pipelines/*.yaml`` recipe as flat FitConfig keys (sections flattened; unknown keys are errors)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise TltfError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TltfError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TltfError(f"--config {path}: expected a mapping of fit options")
    return flatten(data, source=f"--config {path}")
