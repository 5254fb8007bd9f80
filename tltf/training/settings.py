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

Every value is checked when a FitConfig is made (:meth:`FitConfig.validate`, run by ``__post_init__``), whoever
makes it: the CLI's flags, a recipe, ``tltf compare`` or Python. The type comes from the field's annotation, the
range from its ``check`` (declared with the field; the rules live in :mod:`tltf.training.validation`); a bad
value is a one-line :class:`SettingError` before any data is read or anything is written, so ``--dry-run``
refuses what training would refuse.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from tltf.errors import TltfError
from tltf.training import validation as checks
from tltf.training.validation import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LEARNING_RATE, SettingError

from tltf.safe_yaml import MAX_BYTES as RECIPE_MAX_BYTES  # noqa: F401 (tests and callers read them here)
from tltf.safe_yaml import MAX_NESTING as RECIPE_MAX_NESTING  # noqa: F401

GROUPS = ("data", "model", "schedule", "method", "runtime")


_UNSET = object()


def _setting(default, group: str, resume: bool = True, help: str = "", check=None, before=_UNSET):
    """A FitConfig field: its default, its group, whether a change forbids resuming (``resume``), the rule its
    value must meet beyond its annotated type (``check(value, config) -> problem or None``), and ``before``: the
    value that does what runs made before the setting existed did (default: ``default``; a new setting whose
    default changes behaviour says so, so that such runs are not taken for finished ones)."""
    meta = {"group": group, "resume": resume, "help": help, "check": check,
            "before": default if before is _UNSET else before}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FitConfig:
    """Everything ``tltf fit`` needs; the CLI fills it from flags (and recipes)."""

    # data
    data: str = _setting("builtin:shapes", "data", check=checks.not_empty)
    data_dir: str | None = _setting(None, "data", resume=False)
    val_split: float = _setting(0.2, "data", check=checks.bounds(0, 1, high_open=True))
    augment: str = _setting("auto", "data", help="subset of flip,crop,color, none, or auto (see tltf.defaults)",
                           check=checks.augment)
    cache: bool = _setting(True, "data", resume=False)
    target_data: str | None = _setting(None, "data")
    target_labels_for_eval: bool = _setting(False, "data", resume=False)
    # labelled images of any class of the --attributes table, for the generalised zero-shot scores
    eval_data: str | None = _setting(None, "data", resume=False)
    # model
    backbone: str = _setting("mobilenet_v2", "model")
    weights: str = _setting("imagenet", "model")
    image_size: int | None = _setting(None, "model", check=checks.image_size)  # None: the backbone's default
    dropout: float = _setting(0.2, "model", check=checks.bounds(0, 1, high_open=True))
    features: str = _setting("auto", "model", help="final, multilevel, or auto (multilevel for pretrained weights)",
                            check=checks.choice("auto", "final", "multilevel"))
    # zero-shot: a CSV of class attributes (tltf.zeroshot); the model's classes become the table's
    attributes: str | None = _setting(None, "model")
    # multitask: label columns of a CSV manifest (--data labels.csv), one head each on the shared backbone
    tasks: str | None = _setting(None, "model", check=checks.tasks)
    task_weights: str | None = _setting(None, "model")  # one weight per task for the summed loss (default all 1)
    train_bn: bool | None = _setting(None, "model")  # None: train BN only when starting from random weights
    # schedule
    stage: str | None = _setting(None, "schedule", help="None: gradual, or scratch with --weights none",
                                 check=checks.choice("feature", "finetune", "gradual", "scratch", "prototypes",
                                                     problem=(
                                     "unknown stage plan (feature, finetune, gradual, scratch, prototypes)")))
    # a YAML file or an inline {"stages": [...]}
    plan: str | dict | None = _setting(None, "schedule", check=checks.plan)
    # None: the plan's own total, or 6 for a preset
    epochs: int | None = _setting(None, "schedule", check=checks.bounds(1, MAX_EPOCHS))
    learning_rate: float = _setting(1e-3, "schedule", check=checks.bounds(
        0, MAX_LEARNING_RATE, low_open=True, why=" (larger rates diverge)"))
    batch_size: int = _setting(32, "schedule", check=checks.bounds(1, MAX_BATCH_SIZE))
    optimizer: str = _setting("adam", "schedule", check=checks.optimizer)
    clipnorm: float | None = _setting(None, "schedule", check=checks.bounds(0, low_open=True))
    seed: int = _setting(0, "schedule", check=checks.bounds(0, 2 ** 31 - 1))  # seed + 1 seeds the target
    refit: bool | str = _setting("auto", "schedule", help="choose epochs on the hold-out, then train on all labelled "
                                                          "images: on, off or auto (tltf.training.refit)",
                                check=checks.refit)
    # method: what trains (tltf.training.methods) and the transfer strategies (tltf.strategies)
    # domain adaptation to target_data: dann | mmd | coral | adabn | none (source-only), or METHOD+adabn
    adapt: str = _setting("none", "method", check=checks.adapt)
    # --adapt mmd|coral: the discrepancy's weight (after warm-up)
    align_weight: float = _setting(1.0, "method", check=checks.bounds(0))
    # weight of the target predictions' entropy in the loss of --adapt dann|mmd|coral (entropy minimisation)
    target_entropy: float = _setting(0.0, "method", check=checks.bounds(0))  # tltf.adapt.method.TARGET_ENTROPY_WHY
    compare_source_only: bool = _setting(False, "method", resume=False)
    # the gradient-reversal weight's ceiling (tltf.adapt.method.DANNMethod.note gives the measurements)
    lambda_max: float = _setting(0.3, "method", check=checks.bounds(0))
    gamma: float = _setting(10.0, "method", check=checks.bounds(0))  # the lambda schedule's steepness
    anneal_lr: bool = _setting(False, "method")  # the paper's lr / (1 + 10 p) ** 0.75
    ema: str | float | None = _setting("auto", "method", check=checks.ema)  # DANN weight averaging (dann.ema_momentum)
    feature_cache: bool = _setting(True, "method", resume=False)
    freeze_until: str | None = _setting(None, "method")
    reinit_top: int = _setting(0, "method", check=checks.bounds(0))
    l2sp: float = _setting(0.0, "method", check=checks.bounds(0))
    lwf: float = _setting(0.0, "method", check=checks.bounds(0))
    lwf_temperature: float = _setting(2.0, "method", check=checks.bounds(0, low_open=True))
    lp_init: bool | str = _setting("auto", "method", help="LP-FT: head set by logistic regression first (auto: "
                                                          "pretrained weights, head-only first stage)",
                                  check=checks.on_off_auto)
    lp_views: str = _setting("off", "method", help="augmented views per training image for the LP head: off, "
                                                  "auto (small data, kept if cross-validation says they help) or N",
                             check=checks.lp_views)
    # instance-based transfer: auto, knee or a fraction; drop the training images that hurt, train again
    select_instances: str | None = _setting(None, "method", check=checks.select_instances)
    # positions in the training set (before the validation hold-out) left out of training (--select-instances)
    exclude_instances: list = _setting([], "data")
    methods: list = _setting([], "method", help="extra plug-ins by registered name (tltf.training.register_method)",
                             check=checks.methods)
    method_options: dict = _setting({}, "method", help="{plug-in name: {option: value}}")
    # runtime
    out: str = _setting("runs/run", "runtime", resume=False, check=checks.not_empty)
    distribute: str = _setting("none", "runtime", check=checks.choice("none", "mirrored", "multiworker", problem=(
        "choose none, mirrored, multiworker")))  # none | mirrored | multiworker; batch_size is per replica
    jit: bool | None = _setting(None, "runtime", resume=False)  # None: XLA on GPU, not on CPU
    precision: str = _setting("float32", "runtime", resume=False, check=checks.precision)
    tensorboard: bool = _setting(True, "runtime", resume=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> "FitConfig":
        """Check every setting (its annotated type, then its ``check``) and normalise what is safe to (``1`` for a
        float, ``"1e-3"`` as YAML reads it, a path for a string); returns self. The first bad value is a
        :class:`SettingError`. Run on creation and again by :func:`tltf.training.fit`, so a setting changed later
        is checked too."""
        for f in fields(self):
            object.__setattr__(self, f.name, checks.typed(f.name, getattr(self, f.name), str(f.type)))
        for f in fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            problem = check(value, self) if check else None
            if problem:
                raise SettingError(f.name, value, problem)
        return self

    @classmethod
    def from_dict(cls, data: dict, source: str = "config", options=()) -> "FitConfig":
        """A FitConfig from flat keys or grouped sections; an unknown key or a bad value is a one-line error naming
        it as ``source`` gave it: ``--epochs`` for the keys in ``options`` (typed as flags) or every key when
        ``source`` ends in ``options``, else ``SOURCE: epochs``."""
        try:
            return cls(**flatten(data, source))
        except SettingError as e:
            raise e.named(source, options) from None

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
    as unchanged when ``config`` holds the value that behaves as tltf did before it (its ``before``: usually its
    default)."""
    current = asdict(config)
    before = {f.name: f.metadata.get("before") for f in fields(FitConfig)}
    for key in resume_keys():
        if key not in previous:
            if current[key] != before[key]:
                return key, None, current[key]
            continue
        if previous[key] != current[key]:
            return key, previous[key], current[key]
    return None


def load_recipe(path: str | Path) -> dict:
    """A ``pipelines/*.yaml`` recipe as flat FitConfig keys (sections flattened; unknown keys are errors).

    A hostile file costs little (:func:`tltf.safe_yaml.read_yaml`: size and nesting capped, no anchors or
    aliases), and anything that is not a mapping of options is a one-line error."""
    from tltf.safe_yaml import read_yaml

    where = f"--config {path}"
    data = read_yaml(path, where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TltfError(f"{where}: expected a mapping of fit options, not {_KIND_OF.get(type(data), 'a value')}")
    return flatten(data, source=where)


_KIND_OF = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true or false"}
