"""How a setting's value is checked: its type (:func:`typed`, from the field's annotation) and its range or
choices (the ``check`` functions a :class:`tltf.training.settings.FitConfig` field declares), and the one-line
:class:`SettingError` a bad value becomes, named as the flag, recipe entry or Python argument it came from.

A ``check(value, config) -> problem | None`` returns the problem in words (``"must be at least 1"``) or None;
:func:`via` makes one from the parser that reads the setting later, so a value is refused by the very rule that
would fail on it during training.
"""

from __future__ import annotations

import math
import os

from tltf.errors import TltfError

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
        super().__init__(message or f"FitConfig({name}={shown(value, True)}): {problem}")

    def named(self, source: str, options=()) -> "SettingError":
        """The error as ``source`` should report it; ``options`` are the settings given as flags (all of them when
        ``source`` ends in ``options``, as the CLI's and ``tltf compare``'s do)."""
        if source.endswith("options") or self.name in options:
            text = f"{flag(self.name)} {shown(self.value, False)}: {self.problem}"
        else:
            text = f"{source}: {self.name} {shown(self.value, True)}: {self.problem}"
        return SettingError(self.name, self.value, self.problem, text)


def shown(value, quoted: bool) -> str:
    """``value`` for a one-line message: as typed on a command line, or ``repr`` (strings quoted); long values cut."""
    if isinstance(value, float) and not isinstance(value, bool):
        text = f"{value:g}" if float(f"{value:g}") == value or not math.isfinite(value) else repr(value)
    elif isinstance(value, str) and not quoted and value.isprintable():
        text = value
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bounds(low=None, high=None, *, low_open: bool = False, high_open: bool = False, why: str = ""):
    """A ``check``: ``value`` within [low, high] (``*_open``: the bound itself excluded; ``why``: said of the upper
    bound); None always passes."""
    def check(value, config):
        if value is None:
            return None
        if low is not None and (value < low or (low_open and value == low)):
            return f"must be {'above' if low_open else 'at least'} {shown(low, False)}"
        if high is not None and (value > high or (high_open and value == high)):
            return f"must be {'below' if high_open else 'at most'} {shown(high, False)}{why}"
        return None
    return check


def choice(*allowed: str, problem: str = "", fold: bool = False):
    """A ``check``: one of ``allowed``, exactly as the code that reads it compares (``fold``: case ignored)."""
    def check(value, config):
        if value is None or (value.lower() if fold else value) in allowed:
            return None
        return problem or f"choose {', '.join(allowed[:-1])} or {allowed[-1]}"
    return check


def on_off_auto(value, config):  # as tltf.strategies.linear_probe_init reads --lp-init
    if isinstance(value, bool) or str(value).strip().lower() in ("on", "off", "auto", "true", "false", "none"):
        return None
    return "choose on, off or auto"


def via(parse, name: str):
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


def refit(value, config):
    from tltf.training.refit import parse_refit

    return via(parse_refit, "refit")(value, config)


def lp_views(value, config):
    from tltf.strategies.probe_views import parse_views

    return via(parse_views, "lp_views")(value, config)


def select_instances(value, config):
    if value is None:
        return None
    from tltf.instances.selection import parse_selection

    return via(parse_selection, "select_instances")(value, config)


def image_size(value, config):
    """At least the backbone's minimum (a known backbone; an unknown name is reported by the registry), at most
    :data:`MAX_IMAGE_SIZE`."""
    if value is None:
        return None
    from tltf import backbones

    spec = backbones.REGISTRY.get(str(config.backbone).strip().lower().replace("-", "_"))
    if spec is not None and value < spec.min_size:
        return f"too small for {spec.name} (minimum {spec.min_size})"
    return bounds(1, MAX_IMAGE_SIZE)(value, config)


def adapt(value, config):
    from tltf.training.methods import adapt_parts

    return via(adapt_parts, "adapt")(value, config)


def augment(value, config):
    if str(value).strip().lower() == "auto":
        return None
    from tltf.data.augment import Augment

    return via(Augment.parse, "augment")(value, config)


def ema(value, config):
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "off")):
        return None
    from tltf.adapt.dann import parse_ema

    return via(parse_ema, "ema")(value, config)


def optimizer(value, config):
    from tltf.staging.optimizers import OPTIMIZERS

    return choice(*OPTIMIZERS, problem=f"unknown (choose from {', '.join(OPTIMIZERS)})", fold=True)(value, config)


def precision(value, config):
    from tltf.training.runtime import PRECISIONS

    if value in PRECISIONS:  # exact, as set_precision reads it
        return None
    return "choose float32, mixed (float16) or mixed_bfloat16"


def plan(value, config):
    if not isinstance(value, dict):
        return None  # a file: read (and checked) by StagePlan.from_yaml
    from tltf.staging import StagePlan

    return via(lambda plan: StagePlan.from_dict(plan, "plan"), "plan")(value, config)


def methods(value, config):
    bad = [m for m in value if not isinstance(m, str) or not m.strip()]
    return f"each method must be a registered name, not {bad[0]!r}" if bad else None


def tasks(value, config):  # as tltf.multitask.method.task_names reads --tasks
    if value is None:
        return None
    names = [t.strip() for t in str(value).split(",")]
    if len(names) < 2 or not all(names):
        return "expected two or more label columns separated by commas (e.g. digit,parity)"
    if len(set(names)) != len(names):
        return "a task is named twice"
    return None


def not_empty(value, config):
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


_KINDS = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
          "dict": "a mapping", "list": "a list"}


def typed(name: str, value, annotation: str):
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
