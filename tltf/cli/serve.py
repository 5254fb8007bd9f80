"""``tltf serve MODEL.onnx [MORE.onnx …]``: ONNX models over the Open Inference Protocol, with dynamic batching."""

import click


@click.command("serve")
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--model-repository", type=click.Path(file_okay=False),
              help="Serve a Triton model repository instead of MODELS (DIR/NAME/config.pbtxt, "
                   "DIR/NAME/1/model.onnx, as `tltf package --triton` writes): each model named by its folder, "
                   "batched as its config says "
                   "(max_batch_size, dynamic_batching's max_queue_delay_microseconds).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port (0: any free port).")
@click.option("--max-batch", default=32, show_default=True, type=int,
              help="Most rows gathered into one onnxruntime call (1: no dynamic batching).")
@click.option("--max-delay-ms", default=None, type=float,
              help="Longest a request waits for others to share its batch [default: 0 on cpu (requests that queue "
                   "while a batch runs still share the next one; measured on 2 cores, mobilenet_v3_small, 16 "
                   "clients: 302 img/s at 0 ms vs 263 at 5 ms, and a lone client's p50 2.5 ms vs 9.4 ms), 5 on "
                   "cuda/tensorrt].")
@click.option("--threads", default=None, type=int, help="onnxruntime threads per model [default: the CPU cores].")
@click.option("--max-body-mb", default=64.0, show_default=True, type=float, help="Largest request body accepted.")
@click.option("--provider", default="cpu", show_default=True, help="onnxruntime provider: cpu, cuda or tensorrt.")
@click.option("--max-queue", default=None, type=int,
              help="Most requests a model holds (waiting or running); beyond it a 503 with Retry-After at once "
                   "[default: measured per model at start-up, about 1 s of work: the rows/s of one --max-batch run, "
                   "at least 2 batches, at most 4096 (256 if the shapes are open); printed at start-up].")
@click.option("--max-queue-mb", default=None, type=float,
              help="Most input megabytes a model holds; beyond it a 503 [default: 256, or 4 x --max-body-mb if "
                   "larger].")
@click.option("--request-timeout-ms", default=0.0, show_default=True, type=float,
              help="Deadline of a request that brings none (Triton's 'timeout' request parameter, in microseconds, "
                   "overrides it); past it the request is not run and gets a 504 (0: no deadline).")
@click.option("--header-timeout-s", default=10.0, show_default=True, type=float,
              help="A connection must send a whole request head within this (from its opening, or from its "
                   "last answer), or gets a 408 and is closed: a client that sends nothing, or a byte at a time. A "
                   "head is a few hundred bytes, one packet; in benchmarks/serve_soak.py 24 such clients and 16 "
                   "slowloris bodies at all times, cut at 10.0 s and 30.0 s, left the good clients' p99 at 1.01x.")
@click.option("--body-timeout-s", default=30.0, show_default=True, type=float,
              help="A request body must arrive within this (from the end of its head), or gets a 408 and the "
                   "connection is closed (slowloris); 30 s carries a 64 MB body (--max-body-mb's default) at 2.2 MB/s.")
@click.option("--log-level", default="info", show_default=True, help="uvicorn's log level (warning: quieter).")
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
def command(models, model_repository, host, port, max_batch, max_delay_ms, threads, max_body_mb, max_queue,
            max_queue_mb, request_timeout_ms, header_timeout_s, body_timeout_s, provider, log_level, access_log):
    """Serve ONNX MODELS (each named by its file stem), or a Triton --model-repository, until SIGTERM or Ctrl-C.

    \b
    KServe v2 REST:  GET /v2/health/ready, GET /v2/models/NAME, POST /v2/models/NAME/infer
    Image files:     POST /v1/models/NAME/predict (multipart; top classes as `tltf predict --json`)
    Prometheus:      GET /metrics

    Concurrent requests are batched into one onnxruntime call (up to --max-batch rows, waiting at most
    --max-delay-ms). Bad requests get a 4xx with {"error": "..."}; the server stays up. Under load a model
    holds at most --max-queue requests (503 beyond); a request past its deadline gets a 504 and is not run;
    clients too slow to send their request are cut off (408). The routes: GET /v2/openapi.json.
    """
    from tltf.errors import TltfError
    from tltf.serve import serve

    if not models and not model_repository:
        raise TltfError("MODEL: give ONNX files to serve, or --model-repository DIR")

    if max_delay_ms is None:
        max_delay_ms = 0.0 if provider == "cpu" else 5.0
    serve(models, host=host, port=port, max_batch=max_batch, max_delay_ms=max_delay_ms, threads=threads,
          max_body_mb=max_body_mb, provider=provider, log_level=log_level, access_log=access_log,
          max_queue=max_queue, max_queue_mb=max_queue_mb, request_timeout_ms=request_timeout_ms,
          header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s, model_repository=model_repository)
