"""One exception type for every user-facing failure: the CLI prints its message as one line and exits non-zero."""


class CompressorError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""

    exit_code = 2


class GateFailed(CompressorError):
    """Budgets given to ``compress`` or ``check`` were not met; artifacts and report were still written."""

    exit_code = 3
