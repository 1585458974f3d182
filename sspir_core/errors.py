"""Error types with messages a user can act on."""


class SSPIRError(Exception):
    """Base class for errors this package raises on purpose (bad input, bad files)."""


class CheckpointError(SSPIRError):
    """A weights file or checkpoint folder is missing, unreadable, or does not match the model."""


class InputError(SSPIRError, ValueError):
    """An input image, caption or option is not usable."""
