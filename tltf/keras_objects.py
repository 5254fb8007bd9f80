"""Registers tltf's serialisable Keras objects: ``import tltf.keras_objects`` and then plain
``keras.models.load_model("run/model.keras")`` loads a tltf model (:func:`tltf.load_model` does this for you).

Importing it loads TensorFlow, quietly (:mod:`tltf.quiet`); ``import tltf`` does not. The loader
(:mod:`tltf.models.loading`) and every training-side command import it first.
"""

import os

# TensorFlow reads its C++ log level once, when it is imported: INFO lines (Grappler's "Starting new session" twice
# per ONNX export) are noise to tltf's users; warnings and errors still show. A value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from tltf.quiet import quiet_imports  # noqa: E402

with quiet_imports():  # TensorFlow's start-up chatter (tltf.quiet)
    from tltf import models as _models  # noqa: F401  (registers custom Keras objects)
    from tltf.multitask import head as _multitask_head  # noqa: F401  (heads of plug-ins: a saved model loads
    from tltf.zeroshot import head as _zeroshot_head  # noqa: F401   in a process that never trained one)
    from tltf.staging import optimizers as _optimizers  # noqa: F401  (tltf>Adam etc., saved with compiled models)
