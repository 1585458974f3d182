"""Offline loaders for the frozen base models SSP-IR builds on: Stable Diffusion and CLIP ViT-L/14 vision.

Nothing is imported from diffusers/transformers/open_clip until a loader is called, so importing this
package (e.g. when ComfyUI imports the node pack) stays cheap and never touches the network.
"""

from .bundled_configs import BASES, CLIP_VISION_CONFIG, sd_config_dir, write_clip_vocab
from .clip_vision import CLIP_MEAN, CLIP_STD, ClipVisionEncoder, load_clip_vision
from .stable_diffusion import PARTS, SDComponents, detect_base, load_sd_components, load_tokenizer
from .weights_file import WeightsFile, read_state_dict

__all__ = [
    "BASES",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_VISION_CONFIG",
    "PARTS",
    "ClipVisionEncoder",
    "SDComponents",
    "WeightsFile",
    "detect_base",
    "load_clip_vision",
    "load_sd_components",
    "load_tokenizer",
    "read_state_dict",
    "sd_config_dir",
    "write_clip_vocab",
]
