"""``tltf fit --select-instances auto|FRACTION``: the loop of instance-based transfer (Wang et al., arXiv
1809.02776): train, score every training image by its influence on the validation loss, drop the most harmful,
train again on the rest.

1. ``OUT/selection/``: a complete run with the settings asked for (no ``--refit``: the validation images must stay
   unseen, they are what the scores are measured on).
2. Its model scores the training images (:func:`tltf.instances.score_instances`; ``OUT/selection/scores.csv``
   and ``harmful.png``, as ``tltf instances`` writes them). ``auto`` drops every image whose removal is predicted
   to lower the validation loss (:func:`tltf.instances.auto_drop_count`); a fraction drops that share.
3. ``OUT/``: the same settings from the start without them (``exclude_instances``, :mod:`tltf.instances.method`),
   with ``--refit`` if it applies. ``metrics.json``'s ``instances`` records the rule, the count, the files dropped
   and the first run's figures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from tltf.errors import TltfError

MAX_LISTED = 1000  # files named in metrics.json (scores.csv has them all)


def fit_with_selection(fit, config, overwrite: bool, verbose: int, callbacks) -> dict:
    """Run the loop with the engine's ``fit`` (passed in: the engine calls this module)."""
    from tltf.data import load_data, load_source
    from tltf.instances.report import write_contact_sheet, write_scores_csv
    from tltf.instances.items import source_indices
    from tltf.instances.scoring import score_instances
    from tltf.instances.selection import auto_drop_count, parse_selection
    from tltf.models.loading import load_model
    from tltf.reporting import write_json
    from tltf.training.run_folder import finished_run

    rule = parse_selection(config.select_instances)
    if config.exclude_instances:
        raise TltfError("--select-instances: not together with exclude_instances (it chooses them)")
    if not config.val_split:
        raise TltfError("--select-instances: needs validation images to score against (--val-split > 0)")
    out = Path(config.out)
    read = load_source(config.data, config.data_dir)  # once: both runs and the scoring take it
    first = replace(config, out=str(out / "selection"), select_instances=None, refit="off")
    held = None if overwrite else finished_run(out / "selection", first)
    if held is None:
        held = fit(first, overwrite, verbose, callbacks, source=read)
    source = load_data(read, config.val_split, config.seed, config.data_dir)  # the first run's split (seeded)
    if source.val is None:
        raise TltfError("--select-instances: needs validation images to score against (--val-split > 0)")
    scores = score_instances(load_model(out / "selection" / "model.keras"), source.train, source.val,
                             source.class_names, batch_size=config.batch_size)
    count = (auto_drop_count(scores.scores, rule) if isinstance(rule, str)
             else int(round(rule * len(scores))))
    dropped = scores.harmful(count)
    write_scores_csv(out / "selection" / "scores.csv", scores)
    write_contact_sheet(out / "selection" / "harmful.png", scores, source.train)
    excluded = sorted(int(i) for i in source_indices(source.train)[dropped])
    if verbose:
        print(f"select-instances ({rule}): dropping {count} of {len(scores)} training images (scores in "
              f"{out / 'selection' / 'scores.csv'}); training again on the rest", flush=True)
    final = replace(config, select_instances=None, exclude_instances=excluded)
    metrics = fit(final, overwrite, verbose, callbacks, source=read)
    names = [scores.names[i] for i in dropped]
    metrics["instances"] = {
        "rule": rule, "dropped": count, "scored": len(scores), "files": names[:MAX_LISTED],
        "files_listed": min(len(names), MAX_LISTED), "positions": excluded,
        "scores_csv": str(out / "selection" / "scores.csv"), "selection_run": str(out / "selection"),
        "selection_val_accuracy": held.get("val_accuracy"), "selection_test_accuracy": held.get("test_accuracy"),
        "scoring": {k: v for k, v in scores.info.items() if isinstance(v, (int, float, str))}}
    write_json(out / "metrics.json", metrics)
    saved = json.loads((out / "config.json").read_text())
    saved["selection_final"] = {"exclude_instances": len(excluded)}
    saved.update({k: v for k, v in asdict(config).items()})  # the settings asked for: a second fit recognises them
    write_json(out / "config.json", saved)
    return metrics
