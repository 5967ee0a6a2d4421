"""Exceptions a user sees: the CLI prints them as one line, without a traceback."""


class CryoinverseError(Exception):
    """Base class of every error that reports a user's mistake rather than a bug."""


class SpecError(CryoinverseError):
    """A task spec (TOML or Python) is invalid; the message names file, section and field."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DataError(CryoinverseError):
    """An input file cannot be used: unreadable, corrupt, non-finite, wrong dimensionality."""


class RegistryError(CryoinverseError):
    """A component name is unknown, or two plugins claim the same name."""


class InputWarning(UserWarning):
    """A component's finding that the input is unlike what it models, so the result may suffer.

    Components issue it with `warnings.warn(message, InputWarning)` (in `prepare` or while
    sampling); `cryoinverse run` prints it and lists it in the report's `warnings`.
    """
