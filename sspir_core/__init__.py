"""SSP-IR core: models, checkpoint I/O, pipeline and tools. Never imports ComfyUI."""

__version__ = "0.1.0"
