"""Running the server: options checked, the port bound, models loaded, uvicorn started and stopped cleanly.

Everything the operator can get wrong fails before serving, as a one-line :class:`TltfError` (exit status 2 from
the CLI): an option out of range, a host that does not resolve, a port in use (the socket is bound here, before
uvicorn, whose own bind failure would be a log line and exit status 1), a missing file, a file onnxruntime cannot
load. ``--port 0`` takes any free port; the line announcing the server names the one it got.

SIGTERM or Ctrl-C stop it gracefully (uvicorn's shutdown): new connections are refused, requests in flight are
answered (their batches still run), then the batchers stop and the command exits with status 0. uvicorn re-raises
the stopping signal once it is done; a no-op handler installed around it keeps that from killing the process
with the signal's status. A drain that takes longer than :data:`GRACEFUL_SHUTDOWN_S` is cut short.

Hostile clients meet bounds on every side: a connection must send its request head within ``header_timeout_s``
(:mod:`tltf.serve.connections`), its body within ``body_timeout_s`` (:mod:`tltf.serve.limits`), an idle
keep-alive connection is closed after :data:`KEEP_ALIVE_S`; each model holds at most ``max_queue`` requests and
``max_queue_mb`` of input (:mod:`tltf.serve.admission`: 503 beyond), and a request waits for its batch at most
its deadline (``request_timeout_ms`` or its own ``timeout`` parameter: 504 past it).
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import sys
import threading

from tltf.errors import TltfError

#: seconds uvicorn waits for in-flight requests after SIGTERM before cancelling them
GRACEFUL_SHUTDOWN_S = 30
#: seconds an idle keep-alive connection stays open (uvicorn's default)
KEEP_ALIVE_S = 5
#: defaults of the client timeouts (see the CLI's help for the measurements behind them)
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
BACKLOG = 2048
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def check_options(port: int, max_batch: int, max_delay_ms: float, threads: int | None, max_body_mb: float,
                  log_level: str, max_queue: int | None = None, max_queue_mb: float | None = None,
                  request_timeout_ms: float = 0.0, header_timeout_s: float = HEADER_TIMEOUT_S,
                  body_timeout_s: float = BODY_TIMEOUT_S) -> None:
    """One-line :class:`TltfError` for an option out of range."""
    if not 0 <= port <= 65535:
        raise TltfError(f"--port {port}: must be between 0 (any free port) and 65535")
    if max_batch < 1:
        raise TltfError(f"--max-batch {max_batch}: must be at least 1 (1 turns dynamic batching off)")
    if not 0 <= max_delay_ms <= 10_000:
        raise TltfError(f"--max-delay-ms {max_delay_ms:g}: must be between 0 and 10000")
    if threads is not None and threads < 1:
        raise TltfError(f"--threads {threads}: must be at least 1")
    if not 0 < max_body_mb <= 4096:
        raise TltfError(f"--max-body-mb {max_body_mb:g}: must be above 0 and at most 4096")
    if log_level not in LOG_LEVELS:
        raise TltfError(f"--log-level {log_level}: choose from {', '.join(LOG_LEVELS)}")
    if max_queue is not None and max_queue < 1:
        raise TltfError(f"--max-queue {max_queue}: must be at least 1")
    if max_queue_mb is not None and not 0 < max_queue_mb <= 1 << 20:
        raise TltfError(f"--max-queue-mb {max_queue_mb:g}: must be above 0 and at most {1 << 20}")
    if not 0 <= request_timeout_ms <= 3_600_000:
        raise TltfError(f"--request-timeout-ms {request_timeout_ms:g}: must be between 0 (none) and 3600000")
    for option, value in (("--header-timeout-s", header_timeout_s), ("--body-timeout-s", body_timeout_s)):
        if not 0 < value <= 3600:
            raise TltfError(f"{option} {value:g}: must be above 0 and at most 3600")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a host that does not resolve or a port taken is a TltfError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise TltfError(f"--host {host}: cannot resolve it ({getattr(e, 'strerror', None) or e})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop (TIME_WAIT)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise TltfError(f"--port {port}: {host}:{port} is already in use (another server? --port 0 picks a "
                            "free one)") from None
        if e.errno == errno.EACCES:
            raise TltfError(f"--port {port}: permission denied on {host} (ports below 1024 need privileges)") \
                from None
        raise TltfError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(models, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32, max_delay_ms: float = 5.0,
          threads: int | None = None, max_body_mb: float = 64.0, provider: str = "cpu", log_level: str = "info",
          access_log: bool = False, max_queue: int | None = None, max_queue_mb: float | None = None,
          request_timeout_ms: float = 0.0, header_timeout_s: float = HEADER_TIMEOUT_S,
          body_timeout_s: float = BODY_TIMEOUT_S, model_repository: str | None = None) -> None:
    """Serve ONNX ``models`` (paths; each named by its file stem) or the models of a Triton ``model_repository``
    (:mod:`tltf.serve.repository`: each with its config's batching) until SIGTERM or Ctrl-C; see the module doc.
    ``max_queue=None`` measures each model's bound; ``max_queue_mb=None`` takes the default for ``max_body_mb``;
    ``request_timeout_ms=0``: no deadline unless a request brings its own."""
    check_options(port, max_batch, max_delay_ms, threads, max_body_mb, log_level, max_queue, max_queue_mb,
                  request_timeout_ms, header_timeout_s, body_timeout_s)
    sock = bind(host, port)
    try:
        import uvicorn

        from tltf.serve.app import build_app
        from tltf.serve.connections import guarded_h11
        from tltf.serve.models import load_models, load_repository

        if model_repository is not None:
            if models:
                raise TltfError(f"--model-repository {model_repository}: give it or MODEL files, not both")
            loaded = load_repository(model_repository, provider, threads)
        else:
            loaded = load_models(models, provider, threads, max_batch)
        url = url_of(sock)

        def announce() -> None:
            own = {name: f", batch {m.max_batch}, delay {m.max_delay_ms:g} ms" for name, m in loaded.items()
                   if m.max_delay_ms is not None}  # a repository model's own batching
            names = ", ".join(f"{name} ({'v2, v1 images' if m.image_size else 'v2'}{own.get(name, '')})"
                              for name, m in loaded.items())
            print(f"tltf serve: {url}  models: {names}  max batch {max_batch}, max delay {max_delay_ms:g} ms, "
                  f"body limit {max_body_mb:g} MB; {describe_bounds(app.state.admissions, max_queue)}; request "
                  f"timeout {f'{request_timeout_ms:g} ms' if request_timeout_ms else 'none'}; client timeouts: head "
                  f"{header_timeout_s:g} s, body {body_timeout_s:g} s, keep-alive {KEEP_ALIVE_S} s",
                  file=sys.stderr, flush=True)

        app = build_app(loaded, max_batch, max_delay_ms, int(max_body_mb * (1 << 20)), on_ready=announce,
                        max_queue=max_queue, max_queue_bytes=None if max_queue_mb is None else int(
                            max_queue_mb * (1 << 20)), request_timeout_s=request_timeout_ms / 1000 or None,
                        body_timeout_s=body_timeout_s)
        rejected = app.state.metrics.rejected.labels("", "head_timeout")
        config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, backlog=BACKLOG,
                                http=guarded_h11(header_timeout_s, rejected.inc), timeout_keep_alive=KEEP_ALIVE_S)
        with _exit_cleanly_on_signals():
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def describe_bounds(bounds, max_queue: int | None) -> str:
    """The start-up line's account of each model's queue bound (and, when measured, the rate it came from)."""
    parts = []
    for name, b in bounds.items():
        rate = f", measured {b.rows_per_s:,.0f} rows/s" if max_queue is None and b.rows_per_s else ""
        parts.append(f"{name} {b.max_requests} requests / {b.max_bytes / (1 << 20):g} MB{rate}")
    return "queue per model: " + ", ".join(parts)


@contextlib.contextmanager
def _exit_cleanly_on_signals():
    """No-op SIGTERM/SIGINT handlers around ``uvicorn.Server.run``: uvicorn restores the handlers it found and
    re-raises the signal that stopped it after its graceful shutdown; with these that ends nothing, and the
    command returns (status 0). Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

