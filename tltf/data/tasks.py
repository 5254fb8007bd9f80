"""Several labels per image (multitask learning) carried as one joint label.

A manifest read with several label columns (``labels.csv:digit+parity``) gives every image one integer label: the
index of its combination of values among the combinations present (``"3|odd"``). The data layer -- splits,
stratification, caching, the pipeline -- stays the single-label one; :class:`TaskLabels` says how a joint label
splits into one label per task (``table[joint] -> (label of task 0, label of task 1, ...)``).

>>> labels = TaskLabels(["digit", "parity"], [["0", "1", "2"], ["even", "odd"]], np.array([[0, 0], [1, 1], [2, 0]]))
>>> labels.split(np.array([2, 1])).tolist()
[[2, 0], [1, 1]]
>>> labels.joint_names()
['0|even', '1|odd', '2|even']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEPARATOR = "|"


@dataclass
class TaskLabels:
    """``names[t]``: task ``t``; ``classes[t]``: its class names; ``table``: ``(joint classes, tasks)`` int32, the
    label of each task for each joint class."""

    names: list[str]
    classes: list[list[str]]
    table: np.ndarray

    def split(self, joint: np.ndarray) -> np.ndarray:
        """``(N,)`` joint labels -> ``(N, tasks)`` labels."""
        return np.asarray(self.table)[np.asarray(joint, np.int64)]

    def joint_names(self) -> list[str]:
        return [SEPARATOR.join(self.classes[t][v] for t, v in enumerate(row)) for row in np.asarray(self.table)]

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(classes) for name, classes in zip(self.names, self.classes)}


def joint_labels(names: list[str], values: list[tuple[str, ...]], train: list[bool]) -> tuple[TaskLabels, np.ndarray]:
    """The :class:`TaskLabels` of rows of ``values`` (one value per task) and each row's joint label. Each task's
    classes are its values in the training rows, sorted; joint classes are the combinations present, sorted."""
    classes = [sorted({row[t] for row, is_train in zip(values, train) if is_train}) for t in range(len(names))]
    index = [{c: i for i, c in enumerate(cs)} for cs in classes]
    combos = sorted({tuple(index[t][v] for t, v in enumerate(row)) for row in values})
    position = {combo: i for i, combo in enumerate(combos)}
    joint = np.array([position[tuple(index[t][v] for t, v in enumerate(row))] for row in values], np.int32)
    return TaskLabels(list(names), classes, np.array(combos, np.int32).reshape(len(combos), len(names))), joint
