"""Running the server: options checked, the port bound, models loaded, uvicorn started and stopped cleanly.

Everything the operator can get wrong fails before serving, as a one-line :class:`TltfError` (exit status 2 from
the CLI): an option out of range, a host that does not resolve, a port in use (the socket is bound here, before
uvicorn, whose own bind failure would be a log line and exit status 1), a missing file, a file onnxruntime cannot
load. ``--port 0`` takes any free port; the line announcing the server names the one it got.

SIGTERM or Ctrl-C stop it gracefully (uvicorn's shutdown): new connections are refused, requests in flight are
answered (their batches still run), then the batchers stop and the command exits with status 0. uvicorn re-raises
the stopping signal once it is done; a no-op handler installed around it keeps that from killing the process
with the signal's status. A drain that takes longer than :data:`GRACEFUL_SHUTDOWN_S` is cut short.
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
BACKLOG = 2048
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def check_options(port: int, max_batch: int, max_delay_ms: float, threads: int | None, max_body_mb: float,
                  log_level: str) -> None:
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
          access_log: bool = False) -> None:
    """Serve ONNX ``models`` (paths; each named by its file stem) until SIGTERM or Ctrl-C; see the module doc."""
    check_options(port, max_batch, max_delay_ms, threads, max_body_mb, log_level)
    sock = bind(host, port)
    try:
        import uvicorn

        from tltf.serve.app import build_app
        from tltf.serve.models import load_models

        loaded = load_models(models, provider, threads, max_batch)
        url = url_of(sock)

        def announce() -> None:
            names = ", ".join(f"{name} ({'v2, v1 images' if m.image_size else 'v2'})" for name, m in loaded.items())
            print(f"tltf serve: {url}  models: {names}  max batch {max_batch}, max delay {max_delay_ms:g} ms, "
                  f"body limit {max_body_mb:g} MB", file=sys.stderr, flush=True)

        app = build_app(loaded, max_batch, max_delay_ms, int(max_body_mb * (1 << 20)), on_ready=announce)
        config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, backlog=BACKLOG)
        with _exit_cleanly_on_signals():
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


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

