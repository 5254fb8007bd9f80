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
range from its ``check`` (declared with the field); a bad value is a one-line :class:`SettingError` before any data
is read or anything is written, so ``--dry-run`` refuses what training would refuse.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from tltf.errors import TltfError

GROUPS = ("data", "model", "schedule", "method", "runtime")

from tltf.safe_yaml import MAX_BYTES as RECIPE_MAX_BYTES  # noqa: E402,F401 (tests and callers read them here)
from tltf.safe_yaml import MAX_NESTING as RECIPE_MAX_NESTING  # noqa: E402,F401
#: the flag of a setting where it is not ``--`` + its name with dashes
FLAGS = {"learning_rate": "--lr", "methods": "--method", "train_bn": "--train-bn/--freeze-bn",
         "jit": "--jit/--no-jit", "feature_cache": "--feature-cache/--no-feature-cache"}


def flag(name: str) -> str:
    """The command-line option of setting ``name`` (``learning_rate`` -> ``--lr``)."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


class SettingError(TltfError):
    """A setting of the wrong type or out of range; ``name``, ``value`` and ``problem`` say which and why.

    The message names the value as Python gave it (``FitConfig(epochs=0): must be at least 1``); :meth:`named`
    rewrites it for the place the value came from: a flag (``--epochs 0: must be at least 1``) or a recipe
    (``--config r.yaml: epochs 0: must be at least 1``).
    """

    def __init__(self, name: str, value, problem: str, message: str | None = None):
        self.name, self.value, self.problem = name, value, problem
        super().__init__(message or f"FitConfig({name}={_shown(value, True)}): {problem}")

    def named(self, source: str, options=()) -> "SettingError":
        """The error as ``source`` should report it; ``options`` are the settings given as flags (all of them when
        ``source`` ends in ``options``, as the CLI's and ``tltf compare``'s do)."""
        if source.endswith("options") or self.name in options:
            text = f"{flag(self.name)} {_shown(self.value, False)}: {self.problem}"
        else:
            text = f"{source}: {self.name} {_shown(self.value, True)}: {self.problem}"
        return SettingError(self.name, self.value, self.problem, text)


def _shown(value, quoted: bool) -> str:
    """``value`` for a one-line message: as typed on a command line, or ``repr`` (strings quoted); long values cut."""
    if isinstance(value, float) and not isinstance(value, bool):
        text = f"{value:g}" if float(f"{value:g}") == value or not math.isfinite(value) else repr(value)
    elif isinstance(value, str) and not quoted and value.isprintable():
        text = value
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(low=None, high=None, *, low_open: bool = False, high_open: bool = False, why: str = ""):
    """A ``check``: ``value`` within [low, high] (``*_open``: the bound itself excluded; ``why``: said of the upper
    bound); None always passes."""
    def check(value, config):
        if value is None:
            return None
        if low is not None and (value < low or (low_open and value == low)):
            return f"must be {'above' if low_open else 'at least'} {_shown(low, False)}"
        if high is not None and (value > high or (high_open and value == high)):
            return f"must be {'below' if high_open else 'at most'} {_shown(high, False)}{why}"
        return None
    return check


def _choice(*allowed: str, problem: str = "", fold: bool = False):
    """A ``check``: one of ``allowed``, exactly as the code that reads it compares (``fold``: case ignored)."""
    def check(value, config):
        if value is None or (value.lower() if fold else value) in allowed:
            return None
        return problem or f"choose {', '.join(allowed[:-1])} or {allowed[-1]}"
    return check


def _on_off_auto(value, config):  # as tltf.strategies.linear_probe_init reads --lp-init
    if isinstance(value, bool) or str(value).strip().lower() in ("on", "off", "auto", "true", "false", "none"):
        return None
    return "choose on, off or auto"


def _via(parse, name: str):
    """A ``check`` by the parser that reads setting ``name`` later: its problem, without the ``--flag VALUE: `` its
    message starts with (the error names the setting as its source gave it)."""
    def check(value, config):
        try:
            parse(value)
        except TltfError as e:
            text = str(e)
            for head in (f"{flag(name)} {value}: ", f"{name}: "):
                if text.startswith(head):
                    return text[len(head):]
            return text
        return None
    return check


def _refit(value, config):
    from tltf.training.refit import parse_refit

    return _via(parse_refit, "refit")(value, config)


def _image_size(value, config):
    """At least the backbone's minimum (a known backbone; an unknown name is reported by the registry), at most
    :data:`MAX_IMAGE_SIZE`."""
    if value is None:
        return None
    from tltf import backbones

    spec = backbones.REGISTRY.get(str(config.backbone).strip().lower().replace("-", "_"))
    if spec is not None and value < spec.min_size:
        return f"too small for {spec.name} (minimum {spec.min_size})"
    return _bounds(1, MAX_IMAGE_SIZE)(value, config)


def _adapt(value, config):
    from tltf.training.methods import adapt_parts

    return _via(adapt_parts, "adapt")(value, config)


def _augment(value, config):
    if str(value).strip().lower() == "auto":
        return None
    from tltf.data.augment import Augment

    return _via(Augment.parse, "augment")(value, config)


def _ema(value, config):
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "off")):
        return None
    from tltf.adapt.dann import parse_ema

    return _via(parse_ema, "ema")(value, config)


def _optimizer(value, config):
    from tltf.staging.optimizers import OPTIMIZERS

    return _choice(*OPTIMIZERS, problem=f"unknown (choose from {', '.join(OPTIMIZERS)})", fold=True)(value, config)


def _precision(value, config):
    from tltf.training.runtime import PRECISIONS

    if value in PRECISIONS:  # exact, as set_precision reads it
        return None
    return "choose float32, mixed (float16) or mixed_bfloat16"


def _plan(value, config):
    if not isinstance(value, dict):
        return None  # a file: read (and checked) by StagePlan.from_yaml
    from tltf.staging import StagePlan

    return _via(lambda plan: StagePlan.from_dict(plan, "plan"), "plan")(value, config)


def _methods(value, config):
    bad = [m for m in value if not isinstance(m, str) or not m.strip()]
    return f"each method must be a registered name, not {bad[0]!r}" if bad else None


def _not_empty(value, config):
    return "must not be empty" if value is not None and not value.strip() else None


#: the largest --image-size: one 4096 x 4096 RGB image is 200 MB as float32; beyond that a batch fits no memory
MAX_IMAGE_SIZE = 4096
#: the largest --epochs: far past any transfer-learning run; a typo such as 1e9 is refused rather than started
MAX_EPOCHS = 100_000
#: the largest --batch-size: 65,536 images already need tens of GB at 224 px; larger is a typo, not a setting
MAX_BATCH_SIZE = 1 << 16
#: the largest --lr. The rates that train tltf's networks with Adam, AdamW or SGD (momentum 0.9) lie between about
#: 1e-5 and 0.1; at 10 the loss of cnn_small on 16 px images already reached 1e9 to 1e14 within three epochs
#: (sgd and adam, measured). The cap leaves two orders of magnitude of headroom for unusual schedules and refuses
#: typos such as 1e9, or 1e3 for 1e-3; a rate under it that still diverges is stopped during training
#: (tltf.training.callbacks.FiniteLoss) and no model is saved.
MAX_LEARNING_RATE = 10.0


def _setting(default, group: str, resume: bool = True, help: str = "", check=None):
    """A FitConfig field: its default, its group, whether a change forbids resuming (``resume``), and the rule its
    value must meet beyond its annotated type (``check(value, config) -> problem or None``)."""
    meta = {"group": group, "resume": resume, "help": help, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FitConfig:
    """Everything ``tltf fit`` needs; the CLI fills it from flags (and recipes)."""

    # data
    data: str = _setting("builtin:shapes", "data", check=_not_empty)
    data_dir: str | None = _setting(None, "data", resume=False)
    val_split: float = _setting(0.2, "data", check=_bounds(0, 1, high_open=True))
    augment: str = _setting("auto", "data", help="subset of flip,crop,color, none, or auto (see tltf.defaults)",
                           check=_augment)
    cache: bool = _setting(True, "data", resume=False)
    target_data: str | None = _setting(None, "data")
    target_labels_for_eval: bool = _setting(False, "data", resume=False)
    # labelled images of any class of the --attributes table, for the generalised zero-shot scores
    eval_data: str | None = _setting(None, "data", resume=False)
    # model
    backbone: str = _setting("mobilenet_v2", "model")
    weights: str = _setting("imagenet", "model")
    image_size: int | None = _setting(None, "model", check=_image_size)  # None: the backbone's default
    dropout: float = _setting(0.2, "model", check=_bounds(0, 1, high_open=True))
    features: str = _setting("auto", "model", help="final, multilevel, or auto (multilevel for pretrained weights)",
                            check=_choice("auto", "final", "multilevel"))
    # zero-shot: a CSV of class attributes (tltf.zeroshot); the model's classes become the table's
    attributes: str | None = _setting(None, "model")
    train_bn: bool | None = _setting(None, "model")  # None: train BN only when starting from random weights
    # schedule
    stage: str | None = _setting(None, "schedule", help="None: gradual, or scratch with --weights none",
                                 check=_choice("feature", "finetune", "gradual", "scratch", "prototypes", problem=(
                                     "unknown stage plan (feature, finetune, gradual, scratch, prototypes)")))
    plan: str | dict | None = _setting(None, "schedule", check=_plan)  # a YAML file or an inline {"stages": [...]}
    # None: the plan's own total, or 6 for a preset
    epochs: int | None = _setting(None, "schedule", check=_bounds(1, MAX_EPOCHS))
    learning_rate: float = _setting(1e-3, "schedule", check=_bounds(
        0, MAX_LEARNING_RATE, low_open=True, why=" (larger rates diverge)"))
    batch_size: int = _setting(32, "schedule", check=_bounds(1, MAX_BATCH_SIZE))
    optimizer: str = _setting("adam", "schedule", check=_optimizer)
    clipnorm: float | None = _setting(None, "schedule", check=_bounds(0, low_open=True))
    seed: int = _setting(0, "schedule", check=_bounds(0, 2 ** 31 - 1))  # seed + 1 seeds the target
    refit: bool | str = _setting("auto", "schedule", help="choose epochs on the hold-out, then train on all labelled "
                                                          "images: on, off or auto (tltf.training.refit)",
                                check=_refit)
    # method: what trains (tltf.training.methods) and the transfer strategies (tltf.strategies)
    # domain adaptation to target_data: dann | mmd | coral | adabn | none (source-only), or METHOD+adabn
    adapt: str = _setting("none", "method", check=_adapt)
    # --adapt mmd|coral: the discrepancy's weight (after warm-up)
    align_weight: float = _setting(1.0, "method", check=_bounds(0))
    compare_source_only: bool = _setting(False, "method", resume=False)
    # the gradient-reversal weight's ceiling (tltf.adapt.method.DANNMethod.note gives the measurements)
    lambda_max: float = _setting(0.3, "method", check=_bounds(0))
    gamma: float = _setting(10.0, "method", check=_bounds(0))  # the lambda schedule's steepness
    anneal_lr: bool = _setting(False, "method")  # the paper's lr / (1 + 10 p) ** 0.75
    ema: str | float | None = _setting("auto", "method", check=_ema)  # DANN weight averaging (dann.ema_momentum)
    feature_cache: bool = _setting(True, "method", resume=False)
    freeze_until: str | None = _setting(None, "method")
    reinit_top: int = _setting(0, "method", check=_bounds(0))
    l2sp: float = _setting(0.0, "method", check=_bounds(0))
    lwf: float = _setting(0.0, "method", check=_bounds(0))
    lwf_temperature: float = _setting(2.0, "method", check=_bounds(0, low_open=True))
    lp_init: bool | str = _setting("auto", "method", help="LP-FT: head set by logistic regression first (auto: "
                                                          "pretrained weights, head-only first stage)",
                                  check=_on_off_auto)
    methods: list = _setting([], "method", help="extra plug-ins by registered name (tltf.training.register_method)",
                             check=_methods)
    method_options: dict = _setting({}, "method", help="{plug-in name: {option: value}}")
    # runtime
    out: str = _setting("runs/run", "runtime", resume=False, check=_not_empty)
    distribute: str = _setting("none", "runtime", check=_choice("none", "mirrored", "multiworker", problem=(
        "choose none, mirrored, multiworker")))  # none | mirrored | multiworker; batch_size is per replica
    jit: bool | None = _setting(None, "runtime", resume=False)  # None: XLA on GPU, not on CPU
    precision: str = _setting("float32", "runtime", resume=False, check=_precision)
    tensorboard: bool = _setting(True, "runtime", resume=False)

    def __post_init__(self):
        self.validate()

    def validate(self) -> "FitConfig":
        """Check every setting (its annotated type, then its ``check``) and normalise what is safe to (``1`` for a
        float, ``"1e-3"`` as YAML reads it, a path for a string); returns self. The first bad value is a
        :class:`SettingError`. Run on creation and again by :func:`tltf.training.fit`, so a setting changed later
        is checked too."""
        for f in fields(self):
            object.__setattr__(self, f.name, _typed(f.name, getattr(self, f.name), str(f.type)))
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


_KINDS = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
          "dict": "a mapping", "list": "a list"}


def _typed(name: str, value, annotation: str):
    """``value`` as the annotated type (``int | None``), or a :class:`SettingError`. Only lossless conversions:
    a whole float or a numeral for an int, an int or numeral for a float (YAML reads ``1e-3`` as a string), a path
    for a string, a tuple for a list; a float must be finite."""
    kinds = [k.strip() for k in annotation.split("|")]

    def wrong():
        named = [_KINDS[k] for k in kinds if k in _KINDS]
        return SettingError(name, value, f"must be {' or '.join(named)}" + (" (or left out)" if "None" in kinds
                                                                             else ""))

    if value is None:
        if "None" in kinds:
            return None
        raise wrong()
    if value is False and name == "ema":  # YAML's ``ema: off`` (tltf.adapt.dann.parse_ema)
        return None
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
        raise wrong()
    if isinstance(value, os.PathLike) and "str" in kinds:
        value = os.fspath(value)
    if isinstance(value, str):
        if "\0" in value:
            raise SettingError(name, value, "must not contain a NUL character")
        if "str" in kinds:
            return value
        text = value.strip()
        try:
            if "int" in kinds:
                return int(text)
            if "float" in kinds:
                value = float(text)
        except ValueError:
            raise wrong() from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "int" in kinds:
            if isinstance(value, float):
                if not (math.isfinite(value) and value.is_integer()):
                    raise wrong()
                return int(value)
            return value
        if "float" in kinds:
            value = float(value)
            if not math.isfinite(value):
                raise SettingError(name, value, "must be a finite number")
            return value
        if name == "freeze_until" and isinstance(value, int):  # a block index, as the flag's text gives it
            return str(value)
        raise wrong()
    if isinstance(value, (list, tuple)) and "list" in kinds:
        return list(value)
    if isinstance(value, dict) and "dict" in kinds:
        return value
    raise wrong()


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
