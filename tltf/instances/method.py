"""The engine plug-in that leaves training images out: ``exclude_instances`` (set by ``--select-instances``).

``exclude_instances`` lists positions in the data's full training set (before any validation hold-out), so the
same images are left out of every run that reads the data (the hold-out run of ``--refit`` and its final run on
all labelled images alike). They go from the training and the validation split.
"""

from __future__ import annotations

import numpy as np

from tltf.errors import TltfError
from tltf.instances.items import source_indices
from tltf.training.methods import Method


class ExcludeInstances(Method):
    name = "exclude_instances"

    @classmethod
    def wanted(cls, config) -> bool:
        return bool(config.exclude_instances)

    def data(self, run) -> None:
        excluded = np.asarray(run.config.exclude_instances, np.int64)
        total = len(run.data.train.labels)
        if excluded.min() < 0 or excluded.max() >= total:
            raise TltfError(f"exclude_instances: positions must be within the {total} training images of "
                            f"{run.config.data}")
        self.removed = {}
        for name in ("train", "val"):
            split = getattr(run.data, name)
            if split is None or split.labels is not run.data.train.labels:  # a validation split of its own
                continue
            keep = np.flatnonzero(~np.isin(source_indices(split), excluded))
            self.removed[name] = int(len(split) - len(keep))
            setattr(run.data, name, split.select(keep))
        if len(np.unique(run.data.train.selected_labels)) < 2:
            raise TltfError("exclude_instances: the images left in the training split are of a single class")

    def report(self, run) -> dict:
        return {"excluded": {"count": len(run.config.exclude_instances), **self.removed}}
