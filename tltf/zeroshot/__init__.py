"""Zero-shot classification from class attributes (``tltf fit --attributes classes.csv``).

- :mod:`.attributes`: the class-attribute table (a CSV with a ``class`` column and one numeric column per
  attribute) and its checks;
- :mod:`.head`: :class:`AttributeHead`, a classifier head that predicts attributes and scores every class of the
  table by them (Lampert et al.'s direct attribute prediction), with calibrated stacking (Chao et al. 2016);
- :mod:`.calibration`: how the stacking constant is chosen and the generalised zero-shot scores;
- :mod:`.method`: the engine plug-in.
"""
