"""The one exception type for problems a user can fix (bad config, missing file, corrupt data)."""


class LatentFMError(Exception):
    """A user-facing error: its message is one line that names the file, key or value and what to do.

    The CLI prints it without a traceback and exits with code 2.
    """
