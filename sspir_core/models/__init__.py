"""SSP-IR networks: the Refine layer, the Processor, the SSP-IR ControlNet and the patched UNet."""

from .controlnet import ControlResiduals, SSPIRControlNet, make_controlnet
from .processor import Processor
from .refine import RefineLayer
from .unet import SSPIRUNet, patch_unet

__all__ = [
    "ControlResiduals",
    "Processor",
    "RefineLayer",
    "SSPIRControlNet",
    "SSPIRUNet",
    "make_controlnet",
    "patch_unet",
]
