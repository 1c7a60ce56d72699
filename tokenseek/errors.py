"""Errors that the command line reports as one line, without a traceback."""


class TokenSeekError(Exception):
    """A problem with the user's input or environment that they can fix.

    The message must say what is wrong *and* how to fix it; the CLI prints it as
    ``tokenseek: error: <message>`` and exits with status 2.
    """


class UnsupportedModelError(TokenSeekError):
    """The model lacks something token ditching needs (named in the message)."""
