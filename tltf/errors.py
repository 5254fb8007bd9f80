"""User-facing errors: one line, no traceback, non-zero exit."""


class TltfError(Exception):
    """A problem with the user's input (a file, an option, a dataset) that the CLI reports in one line.

    The message must name the offending file or option, e.g.
    ``TltfError("--backbone mobilnet_v2: unknown backbone; did you mean mobilenet_v2?")``.
    """


def first_line(error: BaseException, limit: int | None = 200) -> str:
    """The first line of ``error``'s message (its type's name when it has none), at most ``limit`` characters (None: all): what
    a one-line :class:`TltfError` quotes of a library's exception."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
