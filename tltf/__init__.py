"""tltf: transfer learning for Keras 3 / TensorFlow.

Importing ``tltf`` registers its serialisable Keras objects, so ``keras.models.load_model("run/model.keras")``
works after ``import tltf``, and registers the named weight sets (``--weights torchvision:mobilenet_v2``) that
:func:`tltf.models.classifier.build_classifier` accepts.
"""

__version__ = "0.1.0"

import os  # noqa: E402

# TensorFlow reads its C++ log level once, when it is imported: INFO lines (Grappler's "Starting new session" twice
# per ONNX export) are noise to tltf's users; warnings and errors still show. A value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from tltf.quiet import quiet_imports  # noqa: E402

with quiet_imports():  # TensorFlow's start-up chatter (tltf.quiet)
    from tltf import models as _models  # noqa: F401  (registers custom Keras objects)
    from tltf.multitask import head as _multitask_head  # noqa: F401  (heads of plug-ins: a saved model loads
    from tltf.zeroshot import head as _zeroshot_head  # noqa: F401   in a process that never trained one)
    from tltf.staging import optimizers as _optimizers  # noqa: F401  (tltf>Adam etc., saved with compiled models)
    from tltf.weights import pretrained as _pretrained  # noqa: F401  (--weights torchvision:mobilenet_v2)
