"""Error types with messages a user can act on."""


class SSPIRError(Exception):
    """Base class for errors this package raises on purpose (bad input, bad files)."""


class CheckpointError(SSPIRError):
    """A weights file or checkpoint folder is missing, unreadable, or does not match the model."""


class NoSpaceError(SSPIRError):
    """A save does not fit on the disk: it names the disk, the file or folder, and the space needed and free."""


class InputError(SSPIRError, ValueError):
    """An input image, caption or option is not usable."""


class OptionError(InputError):
    """A setting has a value that cannot work.

    ``option`` is the setting's name in the library (a :class:`~sspir_core.restore.pipeline.RestoreOptions` field);
    ``problem`` may name other settings as ``{name}``. Front ends call :meth:`named` with their own names
    for the settings (``--tile-overlap``, a node's widget), so a message names what the user typed.
    """

    def __init__(self, option: str, problem: str) -> None:
        self.option, self.problem = option, problem
        super().__init__(self.named({}))

    def named(self, names: dict[str, str]) -> str:
        import re

        problem = re.sub(r"\{(\w+)\}", lambda m: names.get(m.group(1), m.group(1)), self.problem)
        return f"{names.get(self.option, self.option)} {problem}"
