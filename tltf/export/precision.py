"""The export precisions, in one table: everything that differs between ``fp32``, ``fp16`` and ``int8``.

:mod:`tltf.export.onnx` (which quantizer runs, whether calibration images are needed, whether the result is timed
against float32), :mod:`tltf.export.parity` (the gate: which number is compared with which default threshold),
``tltf export`` (its flags, their help, the gate options) and :mod:`tltf.bench.runner` (the precision of a file
without one in its metadata) all read :data:`PRECISIONS`; adding a precision is adding a row (and, if it converts
the graph, its function in :mod:`tltf.export.quantize`).

Two parity gates exist (:data:`MAX_DIFF`, :data:`MIN_AGREEMENT`); each precision names the one it is held to.

>>> names()
('fp32', 'fp16', 'int8')
>>> get("int8").threshold, get("int8").gate.option, get("int8").needs_calibration
(0.97, '--min-agreement', True)
>>> get("int4")
Traceback (most recent call last):
...
tltf.errors.TltfError: precision 'int4': must be one of fp32, fp16, int8
"""

from __future__ import annotations

from dataclasses import dataclass

from tltf.errors import TltfError


@dataclass(frozen=True)
class Gate:
    """A parity gate: ``metric`` of :func:`tltf.export.parity.measure` against a threshold set by ``option``."""

    option: str     # the `tltf export` option overriding the threshold
    metric: str     # the key of the parity result that is compared with the threshold
    at_most: bool   # True: metric <= threshold passes (a tolerance); False: metric >= threshold passes
    rule: str       # what a valid threshold is, said in an error ("--max-diff 0.0: must be above 0")
    help: str       # what the threshold means, for the option's --help
    summary: str    # the passed gate in a report table; {t} is the threshold, {pct} the threshold in percent

    def valid(self, threshold: float) -> bool:
        """Whether ``threshold`` is an acceptable value for :attr:`option`."""
        return threshold > 0 if self.at_most else 0 <= threshold <= 1

    def passes(self, value: float, threshold: float) -> bool:
        return value <= threshold if self.at_most else value >= threshold

    def describe(self, threshold: float) -> str:
        return self.summary.format(t=threshold, pct=100 * threshold)


MAX_DIFF = Gate(option="--max-diff", metric="relative_diff", at_most=True, rule="above 0",
                help="the largest |onnxruntime - Keras| accepted, as a fraction of the output range",
                summary="<= {t:g} of the output range")
MIN_AGREEMENT = Gate(option="--min-agreement", metric="top1_agreement", at_most=False, rule="between 0 and 1",
                     help="the smallest top-1 agreement with Keras accepted",
                     summary=">= {pct:.0f}% top-1 agreement")


@dataclass(frozen=True)
class Precision:
    """One export precision."""

    name: str                 # the report's and the ONNX metadata's "precision"
    flag: str | None          # the `tltf export` flag choosing it; None for the default (no flag)
    description: str          # the flag's --help text (without the trailing period)
    gate: Gate                # the parity gate it is held to
    threshold: float          # the gate's default threshold
    needs_calibration: bool   # needs --calibration-data images (static quantization)
    quantizer: str | None     # function of tltf.export.quantize turning the float32 graph into this precision,
                              # called (proto) or, with needs_calibration, (proto, images, workdir=folder);
                              # None: the float32 graph as converted
    progress: str | None      # the progress message of that step; {n} is the number of calibration images
    timed_vs_float32: bool    # after the gate, time the file against its float32 original (batch 1, this CPU)

    @property
    def label(self) -> str:
        """How messages name it: its flag, or its name for the default ("--fp16", "fp32")."""
        return self.flag or self.name


PRECISIONS: tuple[Precision, ...] = (
    Precision(name="fp32", flag=None, description="Float32 weights and compute (the default)",
              gate=MAX_DIFF, threshold=1e-4, needs_calibration=False, quantizer=None, progress=None,
              timed_vs_float32=False),
    Precision(name="fp16", flag="--fp16",
              description="Float16 weights and compute (for GPUs); float32 input and output",
              gate=MIN_AGREEMENT, threshold=0.99, needs_calibration=False, quantizer="to_fp16",
              progress="converting weights and compute to float16", timed_vs_float32=False),
    Precision(name="int8", flag="--int8", description="Static int8 quantization (QDQ, per-channel)",
              gate=MIN_AGREEMENT, threshold=0.97, needs_calibration=True, quantizer="to_int8",
              progress="quantizing to int8 (QDQ, per-channel) on {n} calibration images", timed_vs_float32=True),
)

_BY_NAME = {p.name: p for p in PRECISIONS}
assert len(_BY_NAME) == len(PRECISIONS), "precision names must be unique"
assert sum(p.flag is None for p in PRECISIONS) == 1, "exactly one precision (the default) has no flag"

#: The precision without a flag: what ``tltf export`` writes unless told otherwise.
DEFAULT: str = next(p.name for p in PRECISIONS if p.flag is None)

CALIBRATION_DATA_HINT = "--calibration-data DATA (an image folder, builtin:NAME, tfds:NAME or .npz)"


def names() -> tuple[str, ...]:
    """The precisions' names, in table order."""
    return tuple(p.name for p in PRECISIONS)


def get(name: str, option: str = "precision") -> Precision:
    """The row called ``name``; anything else is a one-line :class:`TltfError` naming ``option`` and the choices."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise TltfError(f"{option} {name!r}: must be one of {', '.join(names())}") from None


def flagged() -> tuple[Precision, ...]:
    """The precisions chosen by a flag (all but the default), in table order."""
    return tuple(p for p in PRECISIONS if p.flag is not None)


def gated_by(gate: Gate) -> tuple[Precision, ...]:
    """The precisions held to ``gate``, in table order."""
    return tuple(p for p in PRECISIONS if p.gate == gate)


def gates() -> tuple[Gate, ...]:
    """The gates some precision is held to, in table order."""
    return tuple(dict.fromkeys(p.gate for p in PRECISIONS))


def needs_calibration_message(precision: Precision) -> str:
    """``--int8 needs --calibration-data DATA (...)``."""
    return f"{precision.label} needs {CALIBRATION_DATA_HINT}"


def format_threshold(x: float) -> str:
    """A threshold for --help: ``1e-4``, ``0.99``."""
    if 0 < abs(x) < 1e-3:
        mantissa, exponent = f"{x:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"
