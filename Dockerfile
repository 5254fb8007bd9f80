# tltf GPU image: TensorFlow's official GPU base (CUDA + cuDNN), tltf with the `gpu` extra (the training stack of
# the `train` extra, TensorFlow's CUDA libraries; onnxruntime-gpu replaces the CPU onnxruntime), running as a
# non-root user. To serve .onnx models without TensorFlow: Dockerfile.serve.
#   docker build -t tltf .
#   docker run --gpus all -v $PWD/data:/data -v $PWD/exported:/work/exported tltf fit --data /data/photos ...
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/tltf
COPY pyproject.toml README.md ./
COPY tltf ./tltf
COPY pipelines ./pipelines
RUN python -m pip install --upgrade pip \
 && python -m pip install ".[gpu]" \
 && python -m pip uninstall -y onnxruntime \
 && python -m pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.18"

RUN useradd --create-home --uid 1000 tltf && mkdir -p /data /work/exported && chown -R tltf /data /work
USER tltf
WORKDIR /work
VOLUME ["/data", "/work/exported"]
ENTRYPOINT ["tltf"]
CMD ["--help"]
