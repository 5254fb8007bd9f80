"""User-facing errors: one line, no traceback, non-zero exit."""


class TltfError(Exception):
    """A problem with the user's input (a file, an option, a dataset) that the CLI reports in one line.

    The message must name the offending file or option, e.g.
    ``TltfError("--backbone mobilnet_v2: unknown backbone; did you mean mobilenet_v2?")``.
    """
