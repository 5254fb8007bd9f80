"""The outcome of a drift check: one object, its JSON form (``tltf drift --json``) and a few lines for a terminal."""

from __future__ import annotations

from dataclasses import dataclass, field

from tltf.drift.classifier_test import ClassifierTestResult
from tltf.drift.label_shift import LabelShift
from tltf.drift.mmd import MMDResult


@dataclass
class DriftReport:
    """Both two-sample tests, the label-shift estimate (``None`` without a trained model or reference labels) and
    where the data came from. ``drift`` is the verdict of the MMD test: ``p_value < alpha``."""

    reference: str
    data: str
    alpha: float
    mmd: MMDResult
    classifier: ClassifierTestResult
    features: dict
    most_different: list[dict] = field(default_factory=list)
    label_shift: LabelShift | None = None
    notes: list[str] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def drift(self) -> bool:
        return self.mmd.p_value < self.alpha

    def as_dict(self) -> dict:
        """The JSON of ``tltf drift --json``: ``drift``, ``p_value``, ``statistic``, ``classifier_auc``,
        ``n_reference``, ``n_data``, ``label_shift`` and the details behind them."""
        return {"drift": self.drift, "p_value": self.mmd.p_value, "statistic": self.mmd.statistic,
                "classifier_auc": self.classifier.auc, "n_reference": self.mmd.n_x, "n_data": self.mmd.n_y,
                "label_shift": self.label_shift.as_dict() if self.label_shift is not None else None,
                "alpha": self.alpha, "reference": self.reference, "data": self.data,
                "mmd": self.mmd.as_dict(), "classifier": self.classifier.as_dict(), "features": self.features,
                "most_different": self.most_different, "notes": self.notes, "outputs": self.outputs,
                "seconds": round(self.seconds, 2)}

    def format(self) -> str:
        """A short human-readable report."""
        f, m, c = self.features, self.mmd, self.classifier
        source = (f"model {f['model']}" if "model" in f else f"{f['backbone']} ({f['weights']})")
        lines = [f"reference: {self.reference} ({m.n_x} images)   data: {self.data} ({m.n_y} images)",
                 f"features: {source} at {f['image_size'][0]}x{f['image_size'][1]}, {f['dims']} dims",
                 f"MMD test: MMD² {m.statistic:.4g}, p = {m.p_value:.4g} ({m.permutations} permutations, Gaussian "
                 f"kernel, median bandwidth {m.bandwidth:.4g})",
                 f"domain classifier: AUC {c.auc:.3f}, balanced accuracy {c.accuracy:.3f} ({c.folds}-fold logistic "
                 f"regression), p ≈ {c.p_value:.2g}"]
        if self.most_different:
            top = ", ".join(_item(d) for d in self.most_different[:3])
            where = f" -> {self.outputs['most_different']}" if "most_different" in self.outputs else ""
            lines.append(f"least like the reference: {top}{where}")
        if self.label_shift is not None:
            s = self.label_shift
            width = max(8, *(len(n) for n in s.class_names)) + 2
            lines += ["label shift (BBSE):", "  " + "class".ljust(width) + "reference  predicted  estimated"]
            for i, name in enumerate(s.class_names):
                lines.append("  " + name[:width - 1].ljust(width) + f"{s.reference_prior[i]:9.3f}  "
                             f"{s.prediction_prior[i]:9.3f}  {s.estimated_prior[i]:9.3f}")
            lines.append(f"  expected accuracy under the estimated prior: {s.expected_accuracy:.3f} (reference "
                         f"{s.reference_accuracy:.3f})")
        lines += [f"note: {n}" for n in self.notes]
        verdict = "DRIFT" if self.drift else "no drift"
        lines.append(f"verdict: {verdict} (MMD p {'<' if self.drift else '>='} alpha {self.alpha:g})")
        return "\n".join(lines)


def _item(d: dict) -> str:
    name = d.get("file") or f"#{d['index']}"
    return f"{name} ({d['score']:.2f})"
