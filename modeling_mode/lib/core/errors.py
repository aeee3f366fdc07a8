"""Bad input, named: the one error type the scripts turn into a single line and exit status 2 (`lib.core.cli`)."""


class InputError(ValueError):
    """Data, flags or files that the project cannot use; the message says what to fix."""
