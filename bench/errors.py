"""One exception type for every user-facing mistake, so the CLI can print it and exit non-zero."""


class BenchError(Exception):
    """A problem with the user's input (file, field, value) that names what was expected."""

    exit_code = 2
