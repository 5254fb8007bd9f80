"""Training methods as plug-ins of the engine (:mod:`tltf.training.engine`).

A :class:`Method` says, in a few hooks, what a way of training adds to a run, in the spirit of Lightning's and
fastai's callbacks:

- ``wanted(config)``: whether the settings ask for it (``--l2sp 0.01``, ``--adapt dann``, ``methods: [name]``);
- ``streams``: the data it needs besides the labelled source (``"target"``: unlabelled target images);
- ``check(config)``: one-line errors for its options, before any data is read;
- ``data_spec(spec)``: what to read instead of ``--data`` (e.g. a manifest's label columns for ``--tasks``);
- ``data(run)``: the data is read (``run.data``); a plug-in may change it (another class list, fewer images);
- ``classifier_options()``: keyword arguments for :func:`tltf.models.classifier.build_classifier` (e.g. a
  normalising head);
- ``start(run)``: the classifier is built, with its starting (pretrained) weights still untouched;
- ``setup(run)``: change what trains once the classifier and stage plan exist (``run.model`` is the classifier that
  is saved, ``run.train_model`` the model fitted: a plug-in may wrap it); ``run.add_loss(term)`` adds a loss term
  ``term(x, y, y_pred) -> scalar`` to every training step, and ``run.objective`` sets the ``compile`` arguments
  (loss and metrics) in place of the head's cross-entropy and accuracy (a multitask loss);
- ``callbacks(run)``: extra Keras callbacks;
- ``trained(run)``: the trainer's loop is over; change the model before it is evaluated and saved;
- ``report(run)``: entries for ``metrics.json``;
- ``start_head(run)``: a plug-in that set the head before any epoch (the LP head, imprinted prototypes) gives its
  figures (``val_accuracy``, ``val_loss``): metrics.json's ``start_head``, the run's own figures when no epoch
  follows, and what a refit weighs "0 epochs" by;
- a **trainer** (``trains = True``) also owns the loop: ``fit(run, callbacks)``; exactly one trainer runs (the
  engine's supervised one unless the settings pick another, e.g. ``--adapt dann``), and ``classifier(run)`` is the
  plain classifier it leaves to save.

Register a method once, by name; the settings then select it::

    from tltf.training import Method, register_method

    @register_method
    class HeadDecay(Method):
        name = "head_decay"
        def setup(self, run):
            kernel = run.model.get_layer("head").dense.kernel
            run.add_loss(lambda x, y, y_pred: 1e-3 * keras.ops.sum(kernel ** 2))

    fit(FitConfig(..., methods=["head_decay"]))

tltf's own methods are registered by module path below and imported only when a run selects them. An installed
package can offer methods to ``tltf fit --method NAME`` through the ``tltf.methods`` entry-point group
(``[project.entry-points."tltf.methods"] head_decay = "mypkg.methods:HeadDecay"``).
"""

from __future__ import annotations

import importlib

from tltf.errors import TltfError


class Method:
    """A plug-in of the training engine; see the module docstring for the hooks."""

    name: str = ""
    trains: bool = False  # a trainer owns the training loop
    streams: tuple[str, ...] = ()  # extra data streams: "target"
    supports_loss_terms: bool = True  # (trainers) whether run.add_loss terms reach its training step
    distributable: bool = True  # (trainers) whether it runs under --distribute (run.dist's scope and global batch)
    sets_head: bool = False  # it sets the head itself: the LP initialisation (lp_init) stands aside

    def __init__(self, config, options: dict | None = None):
        self.config = config
        self.options = dict(options or {})

    @classmethod
    def wanted(cls, config) -> bool:
        """Whether ``config`` asks for this method without naming it in ``methods``."""
        return False

    def check(self, config) -> None:
        """Raise :class:`tltf.errors.TltfError` for bad options (before data is read)."""

    def applies(self, plan) -> bool:
        """Whether, for this stage plan, it has anything to do (if not it is dropped: not run, not listed)."""
        return True

    def note(self) -> dict:
        """``{setting: why}`` for ``--dry-run``'s ``defaults`` when it applies."""
        return {}

    def data_spec(self, spec: str) -> str:
        """The data to read for ``--data spec`` (``spec`` itself unless the plug-in reads it differently)."""
        return spec

    def data(self, run) -> None:
        """The data is read into ``run.data`` (and ``run.target``); change it here, before the model is built."""

    def classifier_options(self) -> dict:
        """Keyword arguments for :func:`tltf.models.classifier.build_classifier` (``head_normalize``...)."""
        return {}

    def start(self, run) -> None:
        """The classifier is built with its starting weights, before ``--reinit-top`` or any other change."""

    def setup(self, run) -> None:
        """Change what trains: wrap ``run.train_model``, add loss terms, regularisers…"""

    def callbacks(self, run) -> list:
        return []

    def trained(self, run) -> None:
        """After the trainer's loop, before the classifier is evaluated and saved (e.g. AdaBN's statistics)."""

    def fit(self, run, callbacks: list) -> None:  # trainers only
        raise NotImplementedError

    def classifier(self, run):
        """The plain classifier to save after training (trainers)."""
        return run.model

    def report(self, run) -> dict:
        """Entries merged into ``metrics.json``."""
        return {}

    def start_head(self, run) -> dict | None:
        """``{"val_accuracy", "val_loss", ...}`` of the head this plug-in set before any epoch, or None."""
        return None

    def finish(self, run, metrics: dict) -> None:
        """After ``metrics.json`` is assembled, before it is written (e.g. add a baseline run's figures)."""


# name -> "module:Class" (tltf's own, imported on use) or a Method subclass (registered at run time)
_REGISTRY: dict[str, str | type] = {
    "supervised": "tltf.training.supervised:Supervised",
    "feature_head": "tltf.strategies.head_on_features:FeatureHead",
    "dann": "tltf.adapt.method:DANNMethod",
    "source_only": "tltf.adapt.method:SourceOnly",
    "mmd": "tltf.adapt.method:MMDMethod",
    "coral": "tltf.adapt.method:CORALMethod",
    "adabn": "tltf.adapt.adabn:AdaBN",
    "lwf": "tltf.strategies.lwf:LwF",
    "l2sp": "tltf.strategies.l2sp:L2SPMethod",
    "lp_init": "tltf.strategies.linear_probe_init:LinearProbeInit",
    "prototypes": "tltf.fewshot.method:Prototypes",
    "attributes": "tltf.zeroshot.method:Attributes",
    "exclude_instances": "tltf.instances.method:ExcludeInstances",
    "multitask": "tltf.multitask.method:Multitask",
}
#: ``--adapt NAME`` -> the trainer it selects
ADAPT_TRAINERS = {"dann": "dann", "mmd": "mmd", "coral": "coral", "none": "source_only", "adabn": "source_only"}
#: plug-ins tried (``wanted``) on every run, in this order; user-registered ones are added
OPTIONAL = ["exclude_instances", "multitask", "prototypes", "attributes", "lp_init", "lwf", "l2sp", "adabn"]


def data_spec(config, selected) -> str:
    """The data spec to read for ``config``: ``--data`` as the ``selected`` methods' ``data_spec`` hooks change it."""
    spec = config.data
    for method in selected:
        spec = method.data_spec(spec)
    return spec


def adapt_parts(text) -> list[str]:
    """``--adapt`` as its parts: ``"dann"`` -> ``["dann"]``, ``"mmd+adabn"`` -> ``["mmd", "adabn"]`` (AdaBN is the one
    method that follows another); a one-line error for anything else."""
    parts = [p.strip().lower() for p in str(text or "none").split("+")]
    known = " or ".join(ADAPT_TRAINERS)
    if len(parts) > 2 or any(p not in ADAPT_TRAINERS for p in parts) or (len(parts) == 2 and (
            parts[1] != "adabn" or parts[0] in ("adabn", "none"))):
        raise TltfError(f"--adapt {text}: choose {known}, or METHOD+adabn (e.g. dann+adabn)")
    return parts


def register_method(cls: type | None = None, *, name: str | None = None):
    """Register a :class:`Method` subclass under ``name`` (default ``cls.name``); usable as a decorator."""
    def add(method: type) -> type:
        key = name or method.name
        if not key:
            raise TltfError(f"register_method: {method.__name__} has no name")
        if not (isinstance(method, type) and issubclass(method, Method)):
            raise TltfError(f"register_method: {method!r} is not a tltf.training.Method subclass")
        _REGISTRY[key] = method
        if not method.trains and key not in OPTIONAL:
            OPTIONAL.append(key)
        return method

    return add(cls) if cls is not None else add


def _load_entry_points() -> None:
    """Methods that installed packages declare under the ``tltf.methods`` entry-point group
    (``name = module:Class``)."""
    from importlib.metadata import entry_points

    for point in entry_points(group="tltf.methods"):
        if point.name not in _REGISTRY:
            _REGISTRY[point.name] = point.value


def method_class(name: str) -> type:
    entry = _REGISTRY.get(name)
    if entry is None:
        _load_entry_points()
        entry = _REGISTRY.get(name)
    if entry is None:
        raise TltfError(f"method {name!r}: not registered (known: {', '.join(sorted(_REGISTRY))})")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = entry
    return entry


def registered() -> list[str]:
    return sorted(_REGISTRY)


def rebind(selected: tuple, config) -> tuple:
    """The selected (trainer, plug-ins), now for ``config``: settings that differ from those they were chosen and
    checked for only in where the run goes (a refit's hold-out run)."""
    trainer, extras = selected
    for method in (trainer, *extras):
        method.config = config
    return trainer, extras


def select(config, trainer: str) -> tuple[Method, list[Method]]:
    """The trainer (by name) and the other plug-ins ``config`` selects, instantiated and checked."""
    options = config.method_options or {}
    if not isinstance(options, dict):
        raise TltfError("method_options: expected a mapping {method name: {option: value}}")
    main = method_class(trainer)(config, options.get(trainer))
    names = list(dict.fromkeys(config.methods or []))
    for name in names:
        if method_class(name).trains:  # an unknown name is a one-line error here
            raise TltfError(f"--method {name}: is a trainer; choose it with its own option (e.g. --adapt)")
        if name not in OPTIONAL:
            OPTIONAL.append(name)  # declared by an entry point
    extras = [method_class(name)(config, options.get(name)) for name in OPTIONAL
              if name in names or method_class(name).wanted(config)]
    setter = next((m for m in (main, *extras) if m.sets_head), None)
    if setter is not None:  # the LP initialisation writes a plain head: it stands aside, and cannot be forced
        if str(config.lp_init).lower() in ("on", "true"):
            raise TltfError(f"--lp-init on: {setter.name} sets the head itself (leave --lp-init at auto or off)")
        extras = [m for m in extras if m.name != "lp_init"]
    for method in (main, *extras):
        method.check(config)
    return main, extras
