"""Errors that the command line reports as one line, without a traceback."""


class TokenSeekError(Exception):
    """A problem with the user's input or environment that they can fix.

    The message must say what is wrong *and* how to fix it; the CLI prints it as
    ``tokenseek: error: <message>`` and exits with status 2.
    """


class UnsupportedModelError(TokenSeekError):
    """The model lacks something token ditching needs (named in the message)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name if it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
