"""Instance-based transfer: which training examples hurt the validation loss ("which of my labels are wrong?").

Wang et al. (arXiv 1809.02776) select the target examples that help; tltf scores each one by the influence of
removing it on the validation loss (Koh & Liang 2017), computed on the classifier's softmax head over its cached
penultimate features:

- :mod:`.influence` -- the math on features (numpy only): the head's objective, Newton-CG refit, conjugate
  gradients with Hessian-vector products, influence scores and exact leave-one-out;
- :mod:`.scoring` -- a model and its data -> :class:`InstanceScores` (:func:`score_instances`, :func:`score_data`);
- :mod:`.selection` -- how many to drop (:func:`auto_drop_count`);
- :mod:`.report` -- ``scores.csv`` and the ``harmful.png`` contact sheet (``tltf instances``);
- :mod:`.items` -- what to call an example: its file, or ``train[INDEX]``.

>>> scores = score_instances(model, source.train, source.val, source.class_names)    # doctest: +SKIP
>>> keep = scores.keep(auto_drop_count(scores.scores))                               # doctest: +SKIP
>>> source.train = source.train.select(keep)                                          # doctest: +SKIP
"""

from tltf.instances.scoring import DEFAULT_L2, InstanceScores, load_splits, score_data, score_instances
from tltf.instances.selection import auto_drop_count

__all__ = ["DEFAULT_L2", "InstanceScores", "auto_drop_count", "load_splits", "score_data", "score_instances"]
