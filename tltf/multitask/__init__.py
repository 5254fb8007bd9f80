"""Multitask learning: one shared backbone, one classification head per task (``tltf fit --tasks a,b``).

- :mod:`tltf.multitask.head`: :class:`MultitaskHead`, the heads side by side behind one output;
- :mod:`tltf.multitask.objective`: the weighted sum of the tasks' cross-entropies and their accuracies;
- :mod:`tltf.multitask.method`: the engine plug-in.
"""
