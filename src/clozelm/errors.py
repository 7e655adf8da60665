"""User-facing errors: one clear line, no traceback at the CLI."""


class ClozelmError(Exception):
    """A problem the user can fix (bad path, corrupt file, mismatched config...).

    The CLI prints ``clozelm: error: <message>`` and exits with status 2 instead of
    showing a traceback, so every message must stand on its own in one line.
    """
