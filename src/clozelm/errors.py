"""User-facing errors: one clear line, no traceback at the CLI."""


class ClozelmError(Exception):
    """A problem the user can fix (bad path, corrupt file, mismatched config...).

    The CLI prints ``clozelm: error: <message>`` and exits with status 2 instead of
    showing a traceback, so every message must stand on its own in one line.
    """


class MissingPackage(ClozelmError):
    """A ClozelmError that installing an optional package fixes (the message says which): what failed may be tried
    again once it is there (a study's evaluation task, say)."""
