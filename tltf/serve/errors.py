"""The one error a request can end in: :class:`ApiError`, an HTTP status and a one-line message.

Everything a client can get wrong (malformed JSON, a wrong tensor name, shape or datatype, an oversized body, an
undecodable image, an unknown model) raises it, and the app answers ``{"error": "<message>"}`` with its status:
the Open Inference Protocol's error shape. It is kept apart from :class:`tltf.errors.TltfError`, which is about
the operator's input (files, options) and ends the command; an :class:`ApiError` ends one request only.
"""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx for the client's mistakes, 5xx for ours) and one line.

    ``headers`` go out with the answer (``Retry-After`` of a 503); ``reason`` (``queue_full``, ``deadline``, ...)
    marks a refusal the server chose under load, counted in ``tltf_serve_rejected_total``."""

    reason: str | None = None

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = one_line(message)
        self.headers = dict(headers or {})


def one_line(message: str, limit: int = 300) -> str:
    """``message`` on one line, at most ``limit`` characters: client-visible errors never span lines."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
