"""Where a run computes: float precision policy, whether a GPU is there, and the XLA default that follows."""

from __future__ import annotations

import keras

from tltf.errors import TltfError

PRECISIONS = {"float32": "float32", "mixed": "mixed_float16", "mixed_float16": "mixed_float16",
              "mixed_bfloat16": "mixed_bfloat16"}


def set_precision(precision: str) -> None:
    """Set Keras' global dtype policy for ``--precision`` (float32, mixed = float16, mixed_bfloat16)."""
    if precision not in PRECISIONS:
        raise TltfError(f"--precision {precision}: choose float32, mixed (float16) or mixed_bfloat16")
    keras.mixed_precision.set_global_policy(PRECISIONS[precision])


def gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def use_jit(jit: bool | None) -> bool:
    """``--jit`` as given, else XLA on a GPU only (on a CPU compiling costs more than it saves)."""
    return jit if jit is not None else gpu_available()
