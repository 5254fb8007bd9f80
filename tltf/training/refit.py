"""Small-data validation: choose on a held-out split, then train again on every labelled image (``--refit``).

With little data, the images held out for validation are a real share of what there is to learn from (20 % of
100 images is 20 images the model never trains on). ``--refit`` runs the plan once with the hold-out
(``OUT/holdout/``, a complete run of its own), takes the fewest epochs whose validation accuracy is within one
standard error of the best (more training must be better by more than the hold-out's noise; with ``--lp-init`` the
LP head before any epoch competes too, and 0 epochs means the LP alone), and trains again from the start on all labelled images
for that many epochs of the same plan, into ``OUT``. ``metrics.json``'s ``refit`` records the choice, the hold-out
curve and the image counts; ``val_accuracy`` is the hold-out's at the chosen epoch (the final model has no
validation images left: that figure is its estimate).

``auto`` (the default) refits when the data brings no validation split of its own, ``--val-split`` holds one out,
there is no ``--target-data``, and there are fewer than :data:`REFIT_BELOW` labelled images per class (the
smallest class counts). Measured at 10 per class (``benchmarks/small_data.py``, MobileNetV2, LP head): MNIST 0.868
on the hold-out's 8 per class -> 0.877 refitted on all 10; 10 shapes per class 0.793 -> 0.893.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tltf.errors import TltfError

#: ``--refit auto`` refits below this many labelled training images per class (hold-out included)
REFIT_BELOW = 50
#: a hold-out smaller than this cannot choose more training over the LP head (one image is > 5 points of it)
MIN_HOLDOUT = 20


def parse_refit(value) -> str:
    text = str(value).strip().lower()
    if value is True or text in ("on", "true", "yes", "1"):
        return "on"
    if value is False or value is None or text in ("off", "false", "no", "0"):
        return "off"
    if text == "auto":
        return "auto"
    raise TltfError(f"--refit {value}: choose on, off or auto")


def refit_decision(config, per_class: int, has_own_val: bool) -> tuple[bool, str]:
    """Whether to refit, and why (for ``--dry-run`` and ``metrics.json``'s ``defaults``)."""
    mode = parse_refit(config.refit)
    if mode == "off":
        return False, ""
    blockers = []
    if has_own_val:
        blockers.append("the data has its own validation split")
    if not config.val_split:
        blockers.append("--val-split 0 holds nothing out")
    if config.target_data:
        blockers.append("domain adaptation selects on the source hold-out only")
    if mode == "on":
        if blockers:
            raise TltfError(f"--refit on: {blockers[0]}")
        return True, "on (asked)"
    if blockers:
        return False, f"off: {blockers[0]}"
    if per_class >= REFIT_BELOW:
        return False, f"off: {per_class} labelled images in the smallest class (refit below {REFIT_BELOW})"
    return True, (f"on: {per_class} labelled images in the smallest class (< {REFIT_BELOW}): epochs chosen on the "
                  "hold-out, then trained again on all of them")


def smallest_class(labels) -> int:
    counts = np.bincount(np.asarray(labels, np.int64))
    return int(counts[counts > 0].min()) if counts.size else 0


def chosen_epochs(history: list[dict], start: tuple | None = None, num_val: int = 0) -> int:
    """The fewest epochs whose validation accuracy is within one standard error of the best (Breiman's one-SE
    rule: on 20 validation images one image is 5 points, and a longer run that wins by it is noise, not evidence).
    ``start`` is ``(val_accuracy, val_loss)`` before the first epoch (the LP head's), which can be chosen: 0 epochs.
    ``num_val`` = 0 takes the best accuracy itself (ties: fewer epochs). Below :data:`MIN_HOLDOUT` validation
    images the LP head stays: measured on 10 shapes per class (6 held out, accuracies 0.5/0.67/0.83 from one image
    to the next), the hold-out picked fine-tuning on 2 of 3 seeds, for 0.94 and 0.80 test accuracy against the LP's
    0.913 and 0.887."""
    scored = [(round(r["val_accuracy"], 6), int(r["epoch"]) + 1) for r in history
              if r.get("val_accuracy") is not None]  # rounded: Keras' float32 0.85000002 ties numpy's 0.85
    if start is not None and start[0] is not None:
        scored.append((round(start[0], 6), 0))
    if not scored:
        return len(history)
    if start is not None and start[0] is not None and 0 < num_val < MIN_HOLDOUT:
        return 0  # the LP's C came from 5-fold CV on every image: a better estimate than a handful held out
    best = max(acc for acc, _ in scored)
    se = float(np.sqrt(best * (1 - best) / num_val)) if num_val > 0 else 0.0
    return min(epochs for acc, epochs in scored if acc >= best - se - 1e-9)


def final_config(config, plan, epochs: int, lp_applied: bool = False):
    """The settings of the refit: the plan's first ``epochs`` epochs, nothing held out; with the LP head, ``--lp-init
    on`` (0 epochs: the LP alone, as a head-only stage that the LP replaces). 0 epochs without the LP: the
    starting head a plug-in set (``--stage prototypes``) alone."""
    if epochs == 0 and not lp_applied:
        return replace(config, plan=None, epochs=None, val_split=0.0, refit="off")
    if epochs == 0:
        plan_dict = {"stages": [{"name": "lp", "epochs": 1, "unfreeze": 0}]}
    else:
        plan_dict = plan.truncated(epochs).to_dict()
    return replace(config, plan=plan_dict, epochs=None, val_split=0.0, refit="off",
                   lp_init="on" if lp_applied else config.lp_init)
