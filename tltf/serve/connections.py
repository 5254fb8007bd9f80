"""Connections that never get to a request: each must send a whole request head within ``head_timeout`` seconds.

uvicorn (h11, the runtime's HTTP parser) arms its keep-alive timer only after a response, and any byte received
disarms it: a client that connects and sends nothing, or sends its request line and headers a byte at a time,
holds a connection (a file descriptor, a protocol object, buffers) for as long as it likes, and nothing in the app
can see it since the app is only called once the head is complete. :func:`guarded_h11` is uvicorn's h11 protocol
with one timer more: armed when the connection opens and after each response, disarmed when a request head has
arrived; when it fires the client gets ``408 Request Timeout`` (``{"error": ...}``) and the connection is closed.
Heads are bounded in size as well (h11's 16 KB ``max_incomplete_event_size``: a larger one is uvicorn's 400).

An idle keep-alive connection is still closed by uvicorn's own ``timeout_keep_alive`` (5 s) first; the body that
follows a head is bounded by :mod:`tltf.serve.limits`. None of this ever holds a batcher: a request reaches one only
once its whole body is in.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tltf.serve.errors import one_line


def timeout_response(seconds: float) -> bytes:
    body = json.dumps({"error": one_line(f"no complete request head within {seconds:g} s (--header-timeout-s)")})
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body.encode()))


def guarded_h11(head_timeout: float, on_cut: Callable[[], None] | None = None):
    """uvicorn's h11 protocol class with the head timer (``on_cut()`` is called for each connection it closes)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer = None
        _waiting_since_cycle = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._check_head()

        def on_response_complete(self) -> None:
            self._arm_head_timer()  # for the next request on this connection, if any comes
            super().on_response_complete()  # may start a pipelined request at once: checked next
            self._check_head()

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            if head_timeout and not self.transport.is_closing():
                self._waiting_since_cycle = self.cycle
                self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _check_head(self) -> None:
            """A new request cycle started since the timer was armed: its head is complete."""
            if self._head_timer is not None and self.cycle is not self._waiting_since_cycle:
                self._disarm_head_timer()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.cycle is not self._waiting_since_cycle:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered (not expected: its head came, so the timer was disarmed)
            self.transport.write(timeout_response(head_timeout))
            self.transport.close()
            if on_cut is not None:
                on_cut()

    return GuardedH11Protocol
