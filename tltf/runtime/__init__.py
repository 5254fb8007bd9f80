"""The inference runtime: an exported ``.onnx`` file run with onnxruntime, numpy and Pillow -- no TensorFlow,
Keras, tf2onnx or onnx (a test imports every module here with those blocked).

- :mod:`tltf.runtime.onnx_model`: tuned onnxruntime sessions, the file's contract (from onnxruntime's view of the
  model's metadata, one parse per file) and :class:`~tltf.runtime.onnx_model.OnnxModel`;
- :mod:`tltf.runtime.images`: image files and uploads decoded and resized as the training pipeline does;
- :mod:`tltf.runtime.outputs`: probabilities, each task's columns, the top classes.

``tltf predict``, ``tltf serve`` (:mod:`tltf.serve`), ``tltf bench`` without ``--keras`` and ``tltf drift`` on an
``.onnx`` are built on these; installed alone (``pip install tltf``), they are all tltf needs.
"""
