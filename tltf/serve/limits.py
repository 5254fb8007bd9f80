"""Request bodies, bounded in size and in time: no client makes the server hold more than ``max_body`` bytes of one
request, or hold a request open longer than ``body_timeout`` seconds while it trickles its body in.

The size limit is checked twice: from ``Content-Length`` before anything is read (a 413 goes back at once, and the
connection is closed rather than drained), and while the body streams in (a chunked upload without a length is
cut off as soon as it passes the limit). A compressed infer request (``Content-Encoding: gzip`` or ``deflate``,
which ``tritonclient`` can send) is inflated under the same limit, so a small zip bomb is refused too.

The time limit runs from the moment the request's head has arrived: a body not complete ``body_timeout`` seconds
later (a client sending a byte a second, or stopping half-way) is answered ``408 Request Timeout`` and the
connection is closed. Nothing of such a request reaches a batcher: inference starts only once the whole body is
in. (A client that sends nothing, or its head a byte at a time, is :mod:`tltf.serve.connections`' business.)
"""

from __future__ import annotations

import asyncio
import zlib

from tltf.serve.errors import ApiError


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, what: str = "the request body"):
        super().__init__(413, f"{what} is larger than the {limit:,}-byte limit (--max-body-mb)",
                         {"Connection": "close"})


class BodyTimeout(ApiError):
    """408: the body did not arrive in time; the connection is closed (the rest of it is not waited for)."""

    reason = "body_timeout"

    def __init__(self, seconds: float, received: int):
        super().__init__(408, f"the request body did not arrive within {seconds:g} s ({received:,} bytes came; "
                              "--body-timeout-s)", {"Connection": "close"})


class BodyLimitMiddleware:
    """ASGI middleware: a 413 for a declared ``Content-Length`` over ``max_bytes``; :class:`BodyTooLarge` from
    ``receive`` once a streamed body passes it, :class:`BodyTimeout` once ``body_timeout`` seconds (``None``: no
    limit) have passed without the whole body (the app answers both like any :class:`ApiError`)."""

    def __init__(self, app, max_bytes: int, body_timeout: float | None = None):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.body_timeout = body_timeout or None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            from starlette.responses import JSONResponse

            error = BodyTooLarge(self.max_bytes, f"the request body ({int(declared):,} bytes)")
            response = JSONResponse({"error": error.message}, error.status, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received, complete = 0, False
        if self.body_timeout is None:
            timer, expired, task, reading = None, False, None, False
        else:  # one timer per request (not a wait_for per receive: that is a task each)
            task, reading, expired = asyncio.current_task(), False, False

            def expire():
                nonlocal expired
                expired = True
                if reading:  # the app waits for the body: stop waiting (else the next receive raises)
                    task.cancel()

            timer = asyncio.get_running_loop().call_later(self.body_timeout, expire)

        async def limited_receive():
            nonlocal received, complete, reading
            if complete or timer is None:  # after the body: waiting for a disconnect takes as long as it takes
                message = await receive()
            else:
                if expired:
                    raise BodyTimeout(self.body_timeout, received)
                reading = True
                try:
                    message = await receive()
                except asyncio.CancelledError:
                    if not expired:
                        raise
                    if hasattr(task, "uncancel"):  # Python 3.11+: the cancel is handled here
                        task.uncancel()
                    raise BodyTimeout(self.body_timeout, received) from None
                finally:
                    reading = False
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                complete = not message.get("more_body", False)
                if complete and timer is not None:
                    timer.cancel()
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            if timer is not None:
                timer.cancel()


def inflate(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """``body`` decoded per its ``Content-Encoding`` (identity, gzip, deflate), at most ``max_bytes`` long."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(415, f"Content-Encoding {encoding[:30]!r} is not supported (identity, gzip, deflate)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)  # deflate = zlib-wrapped, per HTTP
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise ApiError(400, f"the {encoding} body does not decompress ({e})") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise BodyTooLarge(max_bytes, f"the decompressed {encoding} body")
    if not inflater.eof:
        raise ApiError(400, f"the {encoding} body is truncated")
    return data
