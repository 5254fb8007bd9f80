"""Transfer strategies beyond staged fine-tuning, each a plug-in of the training engine (:mod:`tltf.training`):

- :mod:`.features` -- the frozen backbone as a fixed feature extractor: cached "CNN codes", ``extract_features``,
  ``linear_probe`` (``tltf features``);
- :mod:`.head_on_features` -- ``fit`` with a plan that never trains the backbone: the head on cached features;
- :mod:`.partial` -- layer transfer: ``--freeze-until`` and ``--reinit-top``, applied by :mod:`.layer_transfer`;
- :mod:`.linear_probe_init` -- LP-FT: the head set by logistic regression before the plan (``--lp-init``);
- :mod:`.l2sp` -- conservative training by L2-SP (``--l2sp``);
- :mod:`.lwf` -- conservative training by output distillation, learning without forgetting (``--lwf``).
"""
