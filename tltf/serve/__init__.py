"""``tltf serve``: ONNX models over the Open Inference Protocol (KServe v2 REST), with dynamic batching.

- :mod:`tltf.serve.server`: :func:`serve` -- options, the port, uvicorn, a clean exit on SIGTERM;
- :mod:`tltf.serve.app`: the Starlette routes (v2 health/metadata/infer, v1 image predict, /metrics);
- :mod:`tltf.serve.models`: the loaded models (onnxruntime sessions named by file stem) and input checks;
- :mod:`tltf.serve.repository`: a Triton model repository (``--model-repository``) and its batching;
- :mod:`tltf.serve.batcher`: concurrent requests gathered into one onnxruntime call;
- :mod:`tltf.serve.protocol`: v2 JSON / binary tensor data <-> numpy, the datatype map;
- :mod:`tltf.serve.limits`: bounded request bodies; :mod:`tltf.serve.images`: uploads decoded as in training;
- :mod:`tltf.serve.metrics`: Prometheus collectors in a per-app registry; :mod:`tltf.serve.errors`: ApiError.

>>> from tltf.serve import serve
>>> serve(["exported/flowers.onnx"], port=8000, max_batch=32, max_delay_ms=5)   # doctest: +SKIP
"""

from tltf.serve.server import serve

__all__ = ["serve"]
