"""``--tasks a,b``: the engine plug-in of multitask learning.

- ``data_spec``: ``--data labels.csv`` is read with the tasks' label columns at once (``labels.csv:a+b``,
  :mod:`tltf.data.manifest`): one joint label per image, and the source's ``tasks`` say how it splits;
- ``classifier_options``: a :class:`tltf.multitask.head.MultitaskHead`, one softmax per task on the shared
  backbone (the LP initialisation, which writes a plain head, stands aside);
- ``setup``: the training objective, the weighted sum of the tasks' cross-entropies (``--task-weights``), and each
  task's accuracy; the history's ``accuracy`` is the mean of the tasks' accuracies;
- ``trained``: every task scored on the validation and test images;
- ``report``: ``tasks: {name: {classes, weight, val_accuracy, test_accuracy, ...}}`` in metrics.json (after a
  refit, which leaves no validation images, the hold-out's per-task figures are in ``refit.holdout_val_metrics``:
  ``val_NAME_accuracy``).
"""

from __future__ import annotations

from tltf.errors import TltfError
from tltf.training.methods import Method


def task_names(text) -> list[str]:
    return [t.strip() for t in str(text).split(",")]


class Multitask(Method):
    name = "multitask"
    sets_head = True

    @classmethod
    def wanted(cls, config) -> bool:
        return bool(config.tasks)

    def check(self, config) -> None:
        from tltf.data.manifest import is_manifest
        from tltf.multitask.objective import parse_weights

        self.tasks = task_names(config.tasks)
        if not is_manifest(config.data):
            raise TltfError(f"--tasks {config.tasks}: --data must be a CSV manifest with a file column and one label "
                            f"column per task (got {config.data})")
        if ":" in str(config.data).rpartition(".csv")[2]:
            raise TltfError(f"--tasks {config.tasks}: give --data as the CSV file alone (the tasks name its columns)")
        self.weights = parse_weights(config.task_weights, self.tasks)
        for option, value in (("--attributes", config.attributes), ("--target-data", config.target_data),
                              ("--stage prototypes", config.stage == "prototypes"),
                              ("--select-instances", config.select_instances)):
            if value:
                raise TltfError(f"--tasks: not with {option} yet")

    def note(self) -> dict:
        weights = ", ".join(f"{w:g}" for w in self.weights)
        return {"tasks": f"one softmax head per task ({', '.join(self.tasks)}) on the shared backbone; the loss is the "
                         f"weighted mean of their cross-entropies (weights {weights}); accuracy is the mean of the "
                         "tasks' accuracies"}

    def data_spec(self, spec: str) -> str:
        return f"{spec}:{'+'.join(self.tasks)}"

    def data(self, run) -> None:
        self.labels = run.data.tasks  # tltf.data.tasks.TaskLabels

    def classifier_options(self) -> dict:
        from tltf.models.classifier import HEAD_NAME
        from tltf.multitask.head import MultitaskHead

        return {"head": MultitaskHead(self.labels.as_dict(), dropout=self.config.dropout, name=HEAD_NAME)}

    def setup(self, run) -> None:
        from tltf.multitask.objective import objective

        self.segments = run.model.get_layer("head").segments()
        run.objective = objective(self.labels.table, self.segments, self.weights)

    def trained(self, run) -> None:
        from tltf.data import make_pipeline
        from tltf.multitask.evaluation import evaluate_tasks

        import tensorflow as tf

        self.scores = {}
        forward = tf.function(lambda x: run.model(x, training=False), reduce_retracing=True)
        for name in ("val", "test"):
            split = getattr(run.data, name)
            if split is not None and len(split):
                dataset = make_pipeline(split, run.size, run.config.batch_size, cache=False)
                self.scores[name] = evaluate_tasks(run.model, dataset, self.labels, self.segments, forward)
        if "test" in self.scores:
            run.test = self.scores["test"]

    def report(self, run) -> dict:
        tasks = {}
        for (name, _, _, classes), weight in zip(self.segments, self.weights):
            entry = {"classes": list(classes), "weight": weight}
            for split, scores in self.scores.items():
                entry[f"{split}_accuracy"] = scores["tasks"][name]["accuracy"]
            tasks[name] = entry
        return {"tasks": tasks, "task_columns": {name: [start, stop] for name, start, stop, _ in self.segments}}
