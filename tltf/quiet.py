"""Keep TensorFlow's start-up chatter off the terminal, and nothing else.

Importing TensorFlow 2.21 writes eight lines to the process's stderr from C++ (absl) before ``TF_CPP_MIN_LOG_LEVEL``
can take effect: "All log messages before absl::InitializeLog()", oneDNN, "Could not find cuda drivers", CPU
features. :mod:`tltf.keras_objects` imports Keras and TensorFlow inside :func:`filtered_stderr`, which catches file
descriptor 2 meanwhile and passes on every line that is not one of those, so a real error during the import still
reaches the user. ``TF_CPP_MIN_LOG_LEVEL=0`` keeps TensorFlow's output untouched.

On a machine without an NVIDIA GPU (no ``/dev/nvidia*`` device, no ``/proc/driver/nvidia``, no WSL ``/dev/dxg``) the
first device query logs "failed call to cuInit" (and, on some builds, CUDA diagnostics). The import then lists the
physical devices inside the filter too, so that line is dropped there and never appears later; where a GPU is
present nothing is probed and a failing cuInit stays visible.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

NOISE = re.compile(r"(WARNING: All log messages before absl::InitializeLog\(\) is called"
                   r"|To enable the following instructions: "
                   r"|[IW]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] )")
# What CUDA says when it finds no GPU to initialise; noise only where there is none.
NO_GPU_NOISE = re.compile(NOISE.pattern + r"|E\d{4} [\d:. ]+\d+ cuda_(platform|driver)\.cc:\d+\] failed call to cuInit"
                          r"|I\d{4} [\d:. ]+\d+ cuda_diagnostics\.cc:\d+\] ")
GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/dxg")


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = NOISE):
    """Within the block, lines written to fd 2 (by Python or C++) that match ``noise`` are dropped."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not noise.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def has_gpu_device() -> bool:
    """Whether this machine shows an NVIDIA GPU to programs (a device node or the driver's /proc entry)."""
    return any(os.path.exists(path) for path in GPU_DEVICES)


@contextlib.contextmanager
def _without_gpu():
    with filtered_stderr(NO_GPU_NOISE):
        yield
        tf = sys.modules.get("tensorflow")
        if tf is not None:
            try:
                tf.config.list_physical_devices("GPU")  # cuInit fails now, inside the filter
            except Exception:  # noqa: BLE001  (a probe; the user's own call reports any real problem)
                pass


def quiet_imports():
    """:func:`filtered_stderr` for the first import of TensorFlow (plus the device probe on a machine without a
    GPU); a no-op once it is imported or when ``TF_CPP_MIN_LOG_LEVEL=0`` asks for everything."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return contextlib.nullcontext()
    return filtered_stderr() if has_gpu_device() else _without_gpu()
