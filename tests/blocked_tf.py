"""Run a subprocess without the training stack: TensorFlow, Keras, tf2onnx, onnx, TensorBoard and
tensorflow-datasets unimportable, as on an inference-runtime install (``pip install tltf``).

:func:`blocked_tf_env` writes a ``sitecustomize.py`` into a folder and returns an environment that puts it first on
``PYTHONPATH``; Python imports it at start-up, and its meta-path finder raises ``ImportError`` for those top-level
packages (and anything under them) before any other finder looks.

>>> env = blocked_tf_env(tmp_path)                                                         # doctest: +SKIP
>>> subprocess.run([sys.executable, "-c", "import tensorflow"], env=env).returncode        # doctest: +SKIP
1
"""

from __future__ import annotations

import os
from pathlib import Path

#: the training stack's top-level packages
BLOCKED = ("tensorflow", "keras", "tf2onnx", "onnx", "tensorboard", "tensorflow_datasets", "tf_keras")

SITECUSTOMIZE = '''\
import sys

BLOCKED = {blocked!r}


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: this process must run without the training stack")
        return None


sys.meta_path.insert(0, _Block())
'''


def blocked_tf_env(folder: str | Path, base: dict | None = None, also: tuple[str, ...] = ()) -> dict:
    """An environment (``base``, default this process's) for ``subprocess.run`` in which the training stack (and
    the top-level packages ``also`` names) cannot be imported; ``folder`` receives the ``sitecustomize.py`` that
    blocks them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=set(BLOCKED) | set(also)))
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env
