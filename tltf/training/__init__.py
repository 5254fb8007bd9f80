"""The training engine: settings, run folder, callbacks, evaluation, reports, and methods as plug-ins.

>>> from tltf.training import FitConfig, fit
>>> metrics = fit(FitConfig(data="builtin:shapes", weights="none", image_size=64, epochs=4))   # doctest: +SKIP

A method of your own (a regulariser, a loss, a different loop) is a :class:`Method` registered by name with
:func:`register_method` and selected with ``FitConfig(methods=[name])`` or ``tltf fit --method NAME``.
"""

from tltf.training.engine import Run, describe, fit, resolve_plan
from tltf.training.evaluation import evaluate_model
from tltf.training.methods import Method, register_method, registered
from tltf.training.settings import FitConfig, load_recipe

__all__ = ["FitConfig", "Method", "Run", "describe", "evaluate_model", "fit", "load_recipe", "register_method",
           "registered", "resolve_plan"]
