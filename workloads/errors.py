"""Errors for malformed traces. The message names the file, line and field."""


class TraceError(ValueError):
    """A trace file or generator argument is invalid; str(e) is one line naming file, line and field."""
