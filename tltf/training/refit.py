"""Small-data validation: choose on a held-out split, then train again on every labelled image (``--refit``).

With little data, the images held out for validation are a real share of what there is to learn from (20 % of
100 images is 20 images the model never trains on). ``--refit`` runs the plan once with the hold-out
(``OUT/holdout/``, a complete run of its own), takes the number of epochs whose validation accuracy was best
(ties: the lower validation loss, then the earlier epoch), and trains again from the start on all labelled images
for that many epochs of the same plan, into ``OUT``. ``metrics.json``'s ``refit`` records the choice, the hold-out
curve and the image counts; ``val_accuracy`` is the hold-out's at the chosen epoch (the final model has no
validation images left: that figure is its estimate).

``auto`` (the default) refits when the data brings no validation split of its own, ``--val-split`` holds one out,
there is no ``--target-data``, and the labelled training images number under :data:`REFIT_BELOW`.
"""

from __future__ import annotations

from dataclasses import replace

from tltf.errors import TltfError

#: ``--refit auto`` refits below this many labelled training images (hold-out included)
REFIT_BELOW = 2000


def parse_refit(value) -> str:
    text = str(value).strip().lower()
    if value is True or text in ("on", "true", "yes", "1"):
        return "on"
    if value is False or value is None or text in ("off", "false", "no", "0"):
        return "off"
    if text == "auto":
        return "auto"
    raise TltfError(f"--refit {value}: choose on, off or auto")


def refit_decision(config, num_labelled: int, has_own_val: bool) -> tuple[bool, str]:
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
    if num_labelled >= REFIT_BELOW:
        return False, f"off: {num_labelled} labelled images (refit below {REFIT_BELOW})"
    return True, (f"on: {num_labelled} labelled images (< {REFIT_BELOW}): epochs chosen on the hold-out, then "
                  "trained again on all of them")


def chosen_epochs(history: list[dict]) -> int:
    """1-based number of epochs of the best validation accuracy (ties: lower val loss, then earlier)."""
    scored = [(r.get("val_accuracy"), r.get("val_loss"), int(r["epoch"])) for r in history
              if r.get("val_accuracy") is not None]
    if not scored:
        return len(history)
    best = max(scored, key=lambda s: (s[0], -(s[1] if s[1] is not None else 0.0), -s[2]))
    return best[2] + 1


def final_config(config, plan, epochs: int):
    """The settings of the refit: the plan's first ``epochs`` epochs, nothing held out."""
    return replace(config, plan=plan.truncated(epochs).to_dict(), epochs=None, val_split=0.0, refit="off")
