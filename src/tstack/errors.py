"""Exceptions: every user-facing failure is a TstackError with a one-line message."""


class TstackError(Exception):
    """Base of errors that the CLI prints as one line and exits with a non-zero code."""


class SpecError(TstackError, ValueError):
    """A spec field has a value outside what is allowed; the message names field, value and range."""

    def __init__(self, problems: list[str], where: str = "") -> None:
        self.problems = tuple(problems)
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(prefix + "; ".join(problems))

    def __reduce__(self) -> tuple:
        # Rebuild from the fields, so the error survives the trip back from a worker process.
        return (SpecError, (list(self.problems), self.where))


class UnknownNameError(TstackError, KeyError):
    """A preset, device, label or option name that tstack does not know."""

    def __str__(self) -> str:
        return str(self.args[0])
