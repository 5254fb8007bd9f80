"""``tltf compare``: every transfer strategy against training from scratch, same data, seeds and epoch budget.

Each (strategy, seed) pair is one ordinary :func:`tltf.api.fit` run in ``out/runs/<strategy>/seed<k>/``: the
validation split is drawn by ``seed`` (so every strategy of a seed trains and validates on the same images), and
a run folder that already holds a finished run of the same settings is read back instead of retrained, while an
interrupted one resumes from its last epoch (``fit``'s own backup). The summary goes to ``out/compare.json``,
``out/compare.md`` (mean ± sample standard deviation over the seeds) and ``out/curves.png`` (validation accuracy
per epoch, mean over seeds, one line per strategy). A transfer strategy whose mean accuracy is below the scratch
baseline's is flagged as negative transfer, with the gap.

>>> result = compare("builtin:shapes", "runs/cmp", weights="torchvision:mobilenet_v2", image_size=64,
...                  strategies=["scratch", "feature", "finetune"], seeds=2, epochs=4)   # doctest: +SKIP
>>> [row["strategy"] for row in result["summary"]]                                     # doctest: +SKIP
['scratch', 'feature', 'finetune']

Strategies are rows of :data:`STRATEGIES` (FitConfig overrides). One with a ``param`` takes a value after a colon
(``l2sp:0.1`` sets ``FitConfig.l2sp = 0.1``); without one its default applies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from tltf.errors import TltfError
from tltf.reporting import read_history, save_figure, write_json


@dataclass(frozen=True)
class Strategy:
    """A way to train: ``FitConfig`` overrides; ``param`` is the field a ``name:value`` spec sets."""

    name: str
    overrides: dict = field(default_factory=dict)
    transfer: bool = True  # False for the from-scratch baseline, which the others are judged against
    param: str | None = None
    default: object = None
    doc: str = ""


#: The strategies ``tltf compare`` knows; add a row to add one (e.g. a ``freeze_until`` variant).
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("scratch", {"weights": "none", "stage": "scratch", "train_bn": None}, transfer=False,
             doc="random weights, every layer trained from the first epoch (BatchNorm trains too)"),
    Strategy("feature", {"stage": "feature"}, doc="frozen pretrained backbone, the head alone"),
    Strategy("finetune", {"stage": "finetune"}, doc="the head, then every layer at a tenth of the rate"),
    Strategy("gradual", {"stage": "gradual"}, doc="head, top block, top half, all; falling per-block rates"),
    Strategy("prototypes", {"stage": "prototypes", "epochs": None},
             doc="nearest class mean of standardised, L2-normalised frozen features, imprinted into the head"),
    Strategy("partial", {"stage": "finetune"}, param="freeze_until", default=None,
             doc="finetune with the backbone frozen up to a block (partial:BLOCK, an index or block name)"),
    Strategy("l2sp", {"stage": "finetune"}, param="l2sp", default=0.01,
             doc="finetune with the L2-SP penalty towards the pretrained weights (coefficient)"),
    Strategy("lwf", {"stage": "finetune"}, param="lwf", default=1.0,
             doc="finetune keeping the source model's outputs (learning without forgetting; weight); needs "
                 "--weights to be a tltf .keras classifier, whose head gives the source outputs"),
)}

DEFAULT_STRATEGIES = ("scratch", "feature", "finetune", "gradual", "l2sp")

#: ``tltf compare --adapt``: domain-adaptation methods against the source-only baseline (``none``), same budget
ADAPTATIONS: dict[str, Strategy] = {s.name: s for s in (
    Strategy("none", {"adapt": "none"}, transfer=False, doc="source-only: the target images are not used to train"),
    Strategy("dann", {"adapt": "dann"}, doc="domain-adversarial training (gradient reversal)"),
    Strategy("mmd", {"adapt": "mmd"}, doc="multi-kernel MMD between source and target features (DAN)"),
    Strategy("coral", {"adapt": "coral"}, doc="Deep CORAL: source and target feature covariances aligned"),
    Strategy("adabn", {"adapt": "adabn"}, doc="source-only, then BatchNorm statistics from the target (AdaBN)"),
    Strategy("dann+adabn", {"adapt": "dann+adabn"}, doc="DANN, then AdaBN"),
    Strategy("mmd+adabn", {"adapt": "mmd+adabn"}, doc="MMD, then AdaBN"),
    Strategy("coral+adabn", {"adapt": "coral+adabn"}, doc="CORAL, then AdaBN"),
)}
DEFAULT_ADAPTATIONS = ("none", "dann", "mmd", "coral", "adabn")


@dataclass(frozen=True)
class Choice:
    """A strategy as asked for: its row, the value of its parameter and the folder its runs go to."""

    label: str
    strategy: Strategy
    value: object = None

    @property
    def folder(self) -> str:
        return self.label.replace(":", "-").replace("/", "_")

    def overrides(self) -> dict:
        values = dict(self.strategy.overrides)
        if self.strategy.param:
            values[self.strategy.param] = self.value
        return values


def parse_strategies(specs, table: dict | None = None, option: str = "--strategies") -> list[Choice]:
    """``"scratch,feature,l2sp:0.1"`` (or a list of such names) -> the :class:`Choice` of each, checked; ``table``
    is :data:`STRATEGIES` (default) or :data:`ADAPTATIONS` (``option="--adapt"``)."""
    from tltf.training import FitConfig

    table = STRATEGIES if table is None else table
    if isinstance(specs, str):
        specs = specs.split(",")
    known = {f.name for f in fields(FitConfig)}
    choices: list[Choice] = []
    for spec in (s.strip() for s in specs):
        if not spec:
            continue
        name, _, raw = spec.partition(":")
        strategy = table.get(name.strip().lower())
        if strategy is None:
            raise TltfError(f"{option} {spec}: unknown {'method' if option == '--adapt' else 'strategy'} "
                            f"(known: {', '.join(table)})")
        if raw and not strategy.param:
            raise TltfError(f"{option} {spec}: {strategy.name} takes no value")
        missing = [k for k in (*strategy.overrides, strategy.param) if k and k not in known]
        if missing:
            raise TltfError(f"{option} {spec}: needs the fit option {missing[0]!r}, which this version of "
                            "tltf.api.FitConfig does not have")
        if strategy.param and not raw and strategy.default is None:
            raise TltfError(f"{option} {spec}: give {strategy.name}:VALUE (sets {strategy.param})")
        value = _parse_value(raw, spec, strategy.param) if raw else strategy.default
        label = f"{strategy.name}:{raw}" if raw else strategy.name
        if any(c.label == label for c in choices):
            raise TltfError(f"{option} {spec}: given twice")
        choices.append(Choice(label, strategy, value))
    if not choices:
        raise TltfError(f"{option}: nothing given")
    return choices


def _parse_value(raw: str, spec: str, param: str):
    """``raw`` as the type of FitConfig's ``param`` field (``l2sp: float`` -> 0.1; ``freeze_until: str`` -> "9")."""
    from tltf.training import FitConfig

    kind = str(next(f.type for f in fields(FitConfig) if f.name == param))
    try:
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("int"):
            return int(raw)
    except ValueError:
        raise TltfError(f"--strategies {spec}: {raw!r} is not a number ({param} is {kind})") from None
    return raw


def _seed_list(seeds) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise TltfError(f"--seeds {seeds}: at least one seed")
        return list(range(seeds))
    values = [int(s) for s in seeds]
    if not values or len(set(values)) != len(values):
        raise TltfError(f"--seeds {seeds}: give distinct seeds")
    return values


# --- one run ----------------------------------------------------------------------------------------------------

def _finished_run(folder: Path, config) -> dict | None:
    """The metrics of a finished run of ``config``'s settings in ``folder`` (the engine's rule); None when none."""
    from tltf.training.run_folder import finished_run

    try:
        return finished_run(folder, config)
    except TltfError as e:
        raise TltfError(f"--out {folder.parent.parent.parent}: {e}") from None


def _run_record(label: str, seed: int, folder: Path, root: Path, metrics: dict, reused: bool) -> dict:
    history = read_history(folder / "history.csv")
    stages = metrics.get("stages") or [{}]
    cache = metrics.get("feature_cache") if isinstance(metrics.get("feature_cache"), dict) else {}
    extract = float(cache.get("extract_seconds") or 0.0) if cache.get("used") else 0.0
    return {"strategy": label, "seed": seed, "run": str(folder.relative_to(root)), "reused": reused,
            "val_accuracy": metrics.get("val_accuracy"), "best_val_accuracy": metrics.get("best_val_accuracy"),
            "test_accuracy": metrics.get("test_accuracy"),
            "train_seconds": round(sum(r.get("seconds") or 0.0 for r in history) + extract, 3),
            "feature_extract_seconds": extract,
            "trainable_params": stages[-1].get("trainable_params"), "epochs": metrics.get("epochs"),
            "val_curve": [r.get("val_accuracy") for r in history],
            "target_accuracy": metrics.get("target_accuracy"),
            "unsupervised": {k: v for k, v in (metrics.get("unsupervised") or {}).items() if k != "images"}}


# --- the comparison ---------------------------------------------------------------------------------------------

def compare(data: str, out: str | Path, backbone: str = "mobilenet_v2", weights: str = "imagenet",
            strategies=DEFAULT_STRATEGIES, seeds=3, epochs: int | None = None, image_size: int | None = None,
            batch_size: int = 32, overwrite: bool = False, verbose: int = 0, log=print, adapt=None,
            criterion: str | None = None, **fit_options) -> dict:
    """Run every strategy for every seed (or reuse finished runs) and write the table, JSON and curves.

    ``fit_options`` are further :class:`tltf.api.FitConfig` fields shared by every run (``learning_rate``,
    ``val_split``, ``augment`` …). Returns what ``out/compare.json`` holds.

    ``adapt`` (``"none,dann,mmd"`` or a list; needs ``target_data`` in ``fit_options``) compares domain-adaptation
    methods instead of strategies: the baseline is ``none`` (source-only), each row reports the target accuracy
    (with ``target_labels_for_eval``) and the label-free criteria (:mod:`tltf.adapt.selection`), and ``selected``
    names the method ``criterion`` picks (default ``"auto"``, the measured rule of
    :func:`tltf.adapt.selection.choose`), with the reason, each criterion's values and DEV's effective sample size
    and degeneracy flag under ``selection``, and a ``warning`` when the criteria disagree on the winner.
    """
    from tltf.training import FitConfig, fit

    if adapt is not None:
        if not fit_options.get("target_data"):
            raise TltfError("--adapt: needs --target-data (the unlabelled target images)")
        choices = parse_strategies(adapt, ADAPTATIONS, "--adapt")
        criterion = _criterion(criterion)
    else:
        choices = parse_strategies(strategies)
    seed_list = _seed_list(seeds)
    root = Path(out)
    base = {"data": data, "backbone": backbone, "weights": weights, "epochs": epochs, "image_size": image_size,
            "batch_size": batch_size, "tensorboard": False, **fit_options}
    for key in ("out", "seed", "stage"):
        base.pop(key, None)
    FitConfig.from_dict(base, source="compare options")  # unknown options fail before any training
    for choice in choices:  # so do bad values of a strategy (l2sp:-1), before the first run trains
        FitConfig.from_dict({**base, **choice.overrides(), "seed": seed_list[0]},
                            source="--adapt" if adapt is not None else "--strategies")
    runs = []
    for seed in seed_list:
        for choice in choices:
            folder = root / "runs" / choice.folder / f"seed{seed}"
            config = FitConfig.from_dict({**base, **choice.overrides(), "seed": seed, "out": str(folder)})
            metrics = None if overwrite else _finished_run(folder, config)
            reused = metrics is not None
            if not reused:
                log(f"[{choice.label} seed {seed}] training in {folder}")
                start = time.perf_counter()
                metrics = fit(config, overwrite=overwrite, verbose=verbose)
                log(f"[{choice.label} seed {seed}] done in {time.perf_counter() - start:.1f} s")
            record = _run_record(choice.label, seed, folder, root, metrics, reused)
            if reused:
                log(f"[{choice.label} seed {seed}] reusing the finished run in {folder}")
            runs.append(record)
    result = summarise(runs, [c.label for c in choices], [c.label for c in choices if not c.strategy.transfer])
    if adapt is not None:
        result.update(selection(result["summary"], criterion))
    result["settings"] = {**{k: v for k, v in base.items() if k != "tensorboard"}, "seeds": seed_list,
                          "strategies": [c.label for c in choices]}
    result["runs"] = runs
    write_json(root / "compare.json", result)
    from tltf.atomic import replacing

    with replacing(root / "compare.md", ".md") as tmp:
        tmp.write_text(format_markdown(result) + "\n")
    plot_curves(result, root / "curves.png")
    return result


def _criterion(name: str | None) -> str:
    from tltf.adapt.selection import DEFAULT_RULE, RULES

    name = (name or DEFAULT_RULE).strip().lower()
    if name not in RULES:
        raise TltfError(f"--criterion {name}: choose {', '.join(RULES)}")
    return name


def select_method(summary: list[dict], criterion: str) -> dict:
    """``{"criterion", "selected"}``: the method ``criterion`` picks from the per-method means (one criterion's
    best mean: lowest risk, highest density; ``dev_risk`` without values, i.e. runs without a source validation
    split, falls back to ``snd``; or ``"auto"``, the rule of :func:`tltf.adapt.selection.choose`)."""
    found = selection(summary, criterion)
    return {"criterion": found["criterion"], "selected": found["selected"]}


def selection(summary: list[dict], criterion: str) -> dict:
    """What ``compare.json`` says of the choice: ``criterion``, ``selected``, and ``selection`` with the
    ``reason``, per criterion its values, pick and (DEV) effective sample size and degeneracy flag, ``picks``,
    ``disagree`` and the disagreement ``warning`` (None when every criterion picks the same method)."""
    from tltf.adapt.selection import choose

    found = choose(summary, criterion)
    details = {k: found[k] for k in ("reason", "criteria", "picks", "disagree")}
    details["warning"] = disagreement(found)
    return {"criterion": found["criterion"], "selected": found["selected"], "selection": details}


def disagreement(found: dict) -> str | None:
    """One line when the label-free criteria pick different winners, else None."""
    if not found.get("disagree"):
        return None
    picks = ", ".join(f"{name} picks {pick}" for name, pick in found["picks"].items())
    return (f"the label-free criteria disagree on the winner ({picks}); selected {found['selected']} by "
            f"{found['criterion']}: {found['reason']}. Check on a few labelled target images if you can.")


def _mean_sd(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(runs: list[dict], labels: list[str], baselines: list[str]) -> dict:
    """Per-strategy means and spreads of ``runs`` and the negative-transfer flags (pure: no files, no training).

    The accuracy judged is the test accuracy when every run has one, else the final validation accuracy. A
    transfer strategy is flagged when its mean is below the (first) baseline's; ``beyond_spread`` says whether
    the gap exceeds the two standard deviations added together (a gap inside that is weak evidence).
    """
    judged = next((key for key in ("target_accuracy", "test_accuracy")
                   if runs and all(r.get(key) is not None for r in runs)), "val_accuracy")
    summary = []
    for label in labels:
        rows = [r for r in runs if r["strategy"] == label]
        val, val_sd = _mean_sd([r["val_accuracy"] for r in rows])
        test, test_sd = _mean_sd([r.get("test_accuracy") for r in rows])
        target, target_sd = _mean_sd([r.get("target_accuracy") for r in rows])
        criteria = sorted({k for r in rows for k in (r.get("unsupervised") or {})})
        unsupervised = {f"{k}_mean": _mean_sd([(r.get("unsupervised") or {}).get(k) for r in rows])[0]
                        for k in criteria}
        seconds, _ = _mean_sd([r["train_seconds"] for r in rows])
        curves = [r["val_curve"] for r in rows if r.get("val_curve")]
        length = min((len(c) for c in curves), default=0)
        curve = [float(np.mean([c[i] for c in curves if c[i] is not None])) for i in range(length)
                 if any(c[i] is not None for c in curves)]
        summary.append({"strategy": label, "baseline": label in baselines, "seeds": len(rows),
                        "val_accuracy_mean": val, "val_accuracy_sd": val_sd,
                        "test_accuracy_mean": test, "test_accuracy_sd": test_sd,
                        **({"target_accuracy_mean": target, "target_accuracy_sd": target_sd} if target is not None
                           else {}), **unsupervised,
                        "train_seconds_mean": seconds,
                        "trainable_params": max((r["trainable_params"] or 0 for r in rows), default=None),
                        "val_curve_mean": curve})
    flags = []
    base = next((s for s in summary if s["baseline"]), None)
    key = judged.replace("accuracy", "accuracy_mean")
    sd_key = judged.replace("accuracy", "accuracy_sd")
    if base is not None and base[key] is not None:
        for row in summary:
            if row["baseline"] or row[key] is None or row[key] >= base[key]:
                continue
            gap = base[key] - row[key]
            flags.append({"strategy": row["strategy"], "baseline": base["strategy"], "metric": judged,
                          "mean": row[key], "baseline_mean": base[key], "below_by": gap,
                          "beyond_spread": gap > (row[sd_key] or 0.0) + (base[sd_key] or 0.0)})
    return {"judged_metric": judged, "baseline": base["strategy"] if base else None, "summary": summary,
            "negative_transfer": flags}


def _cell(mean, sd, n: int) -> str:
    return "–" if mean is None else f"{mean:.3f}" if n < 2 else f"{mean:.3f} ± {sd:.3f}"


def format_markdown(result: dict) -> str:
    """The table of ``compare.json`` as markdown, with the negative-transfer verdict under it."""
    s = result.get("settings", {})
    n = len(s.get("seeds", [])) or max((r["seeds"] for r in result["summary"]), default=0)
    lines = [f"# tltf compare: {s.get('backbone', '?')} ({s.get('weights', '?')}) on {s.get('data', '?')}", "",
             f"{n} seed(s) per strategy; epochs {s.get('epochs') or 'default'}, image size "
             f"{s.get('image_size') or 'default'}, batch {s.get('batch_size', '?')}. Accuracy: mean ± sample "
             "standard deviation over seeds (final epoch); train s: sum of epoch times (plus the feature "
             "extraction where the head trained on cached features), mean over seeds; "
             "trainable: parameters of the final stage.", ""]
    target = any(row.get("target_accuracy_mean") is not None for row in result["summary"])
    criteria = [c for c in ("dev_risk", "dev_ess", "snd", "target_entropy", "domain_separability")
                if any(row.get(f"{c}_mean") is not None for row in result["summary"])]
    extra = (["target accuracy"] if target else []) + [c.replace("_", " ") for c in criteria]
    lines += ["| " + " | ".join(["strategy", "val accuracy", "test accuracy", *extra, "train s", "trainable params",
                                  "seeds"]) + " |",
              "|" + "---|" * (3 + len(extra)) + "---:|---:|---:|"]
    for row in result["summary"]:
        seconds = "–" if row["train_seconds_mean"] is None else f"{row['train_seconds_mean']:.1f}"
        params = "–" if row["trainable_params"] is None else f"{row['trainable_params']:,}"
        name = row["strategy"] + (" (baseline)" if row["baseline"] else "")
        val = _cell(row["val_accuracy_mean"], row["val_accuracy_sd"], row["seeds"])
        test = _cell(row["test_accuracy_mean"], row["test_accuracy_sd"], row["seeds"])
        cells = ([_cell(row.get("target_accuracy_mean"), row.get("target_accuracy_sd"), row["seeds"])] if target
                 else []) + ["–" if row.get(f"{c}_mean") is None else f"{row[f'{c}_mean']:.3f}" for c in criteria]
        lines.append(f"| {name} | {val} | {test} | {' | '.join([*cells, ''])}{seconds} | {params} | {row['seeds']} |")
    lines.append("")
    if result.get("criterion"):
        chosen = result.get("selection") or {}
        why = chosen.get("reason") or f"{result['criterion'].replace('_', ' ')}"
        lines.append(f"Selected without target labels: **{result.get('selected') or '–'}** ({why}).")
        if chosen.get("warning"):
            lines.append(f"**Warning**: {chosen['warning']}")
        lines.append("")
    metric = result["judged_metric"].replace("_", " ")
    if result["baseline"] is None:
        lines.append("No baseline in this comparison: negative transfer cannot be judged.")
    elif not result["negative_transfer"]:
        lines.append(f"No negative transfer: every transfer strategy's mean {metric} is at or above "
                     f"{result['baseline']}'s.")
    for flag in result["negative_transfer"]:
        strength = ("more than the two spreads together" if flag["beyond_spread"]
                    else "within the spread over seeds, so weak evidence")
        lines.append(f"**Negative transfer**: {flag['strategy']} is below {flag['baseline']} by "
                     f"{flag['below_by']:.3f} mean {metric} ({flag['mean']:.3f} vs {flag['baseline_mean']:.3f}; "
                     f"{strength}).")
    return "\n".join(lines)


def plot_curves(result: dict, path: str | Path) -> None:
    """Validation accuracy per epoch, mean over seeds, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in result["summary"]:
        curve = row["val_curve_mean"]
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3,
                    ls="--" if row["baseline"] else "-", label=row["strategy"])
    s = result.get("settings", {})
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation accuracy (mean of {len(s.get('seeds', [])) or '?'} seeds)")
    ax.set_title(f"{s.get('backbone', '')} ({s.get('weights', '')}) on {s.get('data', '')}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no curve (no validation split): no legend to draw
        ax.legend(fontsize=8)
    save_figure(fig, path)
