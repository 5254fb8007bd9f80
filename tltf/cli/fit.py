"""``tltf fit``: flags -> :class:`tltf.training.FitConfig` -> :func:`tltf.training.fit`."""

from __future__ import annotations

import click

from tltf.cli import options


@click.command("fit")
@click.option("--config", "recipe", type=click.Path(dir_okay=False),
              help="A pipelines/*.yaml recipe; flags given on the command line override its values.")
@click.option("--dry-run", is_flag=True, help="Validate the settings and print the stage plan; do not train.")
@options.data(required=False)
@options.backbone
@click.option("--stage", type=click.Choice(["feature", "finetune", "gradual", "scratch", "prototypes"]),
              help="Stage plan preset (ignored with --plan) [default: gradual; scratch with --weights none].")
@click.option("--plan", type=click.Path(dir_okay=False), help="Stage plan YAML file.")
@click.option("--epochs", type=int, help="Total epochs, divided among the stages [default: 6 or the plan's].")
@click.option("--out", default="runs/run", show_default=True, help="Run folder.")
@options.weights()
@options.image_size
@options.batch_size
@click.option("--learning-rate", "--lr", "learning_rate", type=float, default=1e-3, show_default=True,
              help="Learning rate of the first stage (the head).")
@options.seed
@options.val_split
@click.option("--train-bn/--freeze-bn", "train_bn", default=None,
              help="Let BatchNorm update its statistics [default: only with --weights none].")
@click.option("--dropout", type=float, default=0.2, show_default=True)
@click.option("--features", type=click.Choice(["auto", "final", "multilevel"]), default="auto", show_default=True,
              help="What the head reads: the backbone's output, or also the top half of its blocks (multilevel); "
                   "auto: multilevel for pretrained weights.")
@click.option("--augment", default="auto", show_default=True,
              help="Subset of flip,crop,color, none, or auto (flips for colour images only).")
@click.option("--optimizer", default="adam", show_default=True, help="adam, adamw or sgd.")
@options.data_dir
@click.option("--jit/--no-jit", default=None, help="XLA-compile the train step [default: on GPU only].")
@click.option("--precision", default="float32", show_default=True, help="float32, mixed or mixed_bfloat16.")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "multiworker"]), default="none",
              show_default=True, help="tf.distribute strategy; --batch-size is per replica, the LR scales with them.")
@click.option("--adapt", default="none", show_default=True,
              help="Domain adaptation to --target-data: dann, mmd, coral, adabn, METHOD+adabn, or none (with "
                   "--target-data: the source-only baseline).")
@click.option("--target-data", help="Unlabelled target images: a folder (flat or class folders), .npz, tfds:… .")
@click.option("--target-labels-for-eval", is_flag=True, default=None,
              help="The target data has labels: use them to measure target accuracy (never to train).")
@click.option("--compare-source-only", is_flag=True, default=None,
              help="With --adapt dann: also train the source-only baseline (same seed, budget) and print both.")
@click.option("--lambda-max", type=float, help="DANN: ceiling of the gradient-reversal weight [default: 0.3].")
@click.option("--gamma", type=float, help="DANN: steepness of the lambda schedule 2/(1+exp(-gamma p))-1 [10].")
@click.option("--anneal-lr", is_flag=True, default=None, help="DANN: the paper's lr/(1+10p)^0.75 annealing.")
@click.option("--ema", help="Domain adaptation: weight-averaging momentum, auto (the last ~10% of the run) or off "
                           "[default: auto].")
@click.option("--align-weight", type=float, help="--adapt mmd|coral: weight of the feature discrepancy [default: 1].")
@click.option("--target-entropy", type=float, help="--adapt dann|mmd|coral: weight of the target predictions' entropy "
              "in the loss (entropy minimisation, warmed up like the lambda) [default: 0, off; see --dry-run].")
@click.option("--feature-cache/--no-feature-cache", "feature_cache", default=None,
              help="When no stage trains the backbone, train the head on cached backbone features [default: on].")
@click.option("--freeze-until", help="Keep the backbone frozen up to and including this block (0-based index or "
              "name) or layer, in every stage.")
@click.option("--reinit-top", type=int, help="Re-initialise the top K backbone blocks before training [default: 0].")
@click.option("--l2sp", type=float, help="L2-SP: add alpha/2 ||w - w0||^2 pulling the backbone weights that train "
              "toward the pretrained ones [default: 0, off].")
@click.option("--lwf", type=float, help="Learning without forgetting: weight of the loss keeping the source model's "
              "outputs on the target images [default: 0, off].")
@click.option("--lwf-temperature", type=float, help="LwF: softmax temperature [default: 2].")
@click.option("--refit", type=click.Choice(["on", "off", "auto"]),
              help="Choose the epochs on the hold-out, then train again on all labelled images [default: auto, on "
                   "below 50 images per class].")
@click.option("--lp-init", type=click.Choice(["on", "off", "auto"]),
              help="LP-FT: set the head by logistic regression on the frozen features before the plan [default: auto, on "
                   "for pretrained weights when the first stage trains the head only].")
@click.option("--lp-views", help="LP head: random augmentations of each training image also fed to the logistic "
              "regression: off, auto (below 50 images per class, kept only if cross-validation says they help), or a "
              "number [default: off; on the small-data suite they did not help on average].")
@click.option("--attributes", type=click.Path(dir_okay=False),
              help="Zero-shot: a CSV with a 'class' column and one numeric column per attribute, for every class "
                   "including those without images; the model outputs the table's classes.")
@click.option("--eval-data", help="With --attributes: labelled images of any class of the table, scored as "
              "generalised zero-shot (seen, unseen, harmonic mean).")
@click.option("--tasks", help="Multitask: label columns of the CSV manifest given as --data (e.g. digit,parity); one "
              "head per task on the shared backbone, one ONNX output per task.")
@click.option("--task-weights", help="With --tasks: one weight per task for the summed loss, e.g. 1,0.5 "
              "[default: all 1].")
@click.option("--select-instances",
              help="Instance-based transfer: train, score each training image by its influence on the validation "
                   "loss, drop the harmful ones (auto: every one whose removal is predicted to help, at most half; "
                   "or a fraction), train again [default: off].")
@click.option("--method", "methods", multiple=True,
              help="A registered training plug-in to add (tltf.training.register_method); repeatable.")
@click.option("--overwrite", is_flag=True, help="Start over even if --out holds a run.")
@click.option("--quiet", is_flag=True, help="No per-epoch progress output.")
@click.pass_context
def command(ctx, recipe, dry_run, quiet, overwrite, **flags):
    """Train a classifier on a pretrained backbone with a staged plan (head, top blocks, all)."""
    import json

    from click.core import ParameterSource

    from tltf.training import FitConfig, describe, fit, load_recipe
    from tltf.errors import TltfError

    values = load_recipe(recipe) if recipe else {}
    from_recipe = set(values)
    for name, value in flags.items():  # flags typed on the command line win over the recipe
        if name not in values or ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            values[name] = value
            from_recipe.discard(name)
    values = {k: v for k, v in values.items() if v is not None or k in ("train_bn", "jit", "epochs")}
    methods = values.get("methods") or []
    values["methods"] = [methods] if isinstance(methods, str) else list(methods) if isinstance(
        methods, (list, tuple)) else methods  # anything else: FitConfig names it
    if "ema" in values:
        from tltf.adapt.dann import parse_ema

        values["ema"] = parse_ema(values["ema"])
    if not values.get("data"):
        raise TltfError("--data is required (or a --config recipe that sets data)")
    config = FitConfig.from_dict(values, source=f"--config {recipe}" if recipe else "options",
                                 options=set(values) - from_recipe)  # a bad value is named as it was given
    if dry_run:
        click.echo(json.dumps(describe(config), indent=2, default=str))
        return
    metrics = fit(config, overwrite=overwrite, verbose=0 if quiet else 2)
    click.echo(f"\n{'stage':<10}{'epochs':>7}{'trainable':>12}{'lr':>10}{'val_acc':>9}")
    for s in metrics["stages"]:
        acc = "-" if s["val_accuracy"] is None else f"{s['val_accuracy']:.3f}"
        click.echo(f"{s['name']:<10}{s['epochs']:>7}{s['trainable_params']:>12,}{s['learning_rate']:>10.1e}{acc:>9}")
    summary = f"val_accuracy={metrics['val_accuracy']:.3f}" if metrics["val_accuracy"] is not None else ""
    if "test_accuracy" in metrics:
        summary += f" test_accuracy={metrics['test_accuracy']:.3f}"
    held = (metrics.get("refit") or {}).get("holdout_val_metrics") or {}  # a refit: the hold-out's figures
    for task, entry in (metrics.get("tasks") or {}).items():  # --tasks: each task's own figures
        entry = {"val_accuracy": held.get(f"val_{task}_accuracy"), **entry}
        figures = " ".join(f"{key}={entry[key]:.3f}" for key in ("val_accuracy", "test_accuracy")
                           if entry.get(key) is not None)
        click.echo(f"task {task}: {figures or 'no validation or test images'}")
    if "domain_accuracy" in metrics:  # --target-data: domain adaptation (or its source-only baseline)
        click.echo(_adaptation_table(metrics))
    click.echo(f"{summary}\nsaved {config.out}/model.keras, metrics.json, history.csv, curves.png")


def _adaptation_table(metrics: dict) -> str:
    """``adapt | source val | target | domain`` rows for the run (and its source-only baseline)."""
    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    rows = [(metrics["adapt"], metrics)]
    if metrics.get("source_only"):
        rows.append(("none", metrics["source_only"]))
    width = max(8, *(len(name) + 1 for name, _ in rows))
    lines = [f"\n{'adapt':<{width}}{'source_val':>11}{'target':>9}{'domain':>9}"]
    for name, m in rows:
        lines.append(f"{name:<{width}}{cell(m.get('source_val_accuracy')):>11}{cell(m.get('target_accuracy')):>9}"
                     f"{cell(m.get('domain_accuracy')):>9}")
    return "\n".join(lines)
