"""Weight I/O: SSP-IR's own checkpoints and the frozen base models it builds on.

:mod:`.checkpoint` reads and writes SSP-IR weights (the official ``checkpoint-N/`` layout and the compact
file); the loaders read Stable Diffusion (:mod:`.stable_diffusion`, LDM single files or diffusers folders,
:mod:`.ldm_layout`) and CLIP ViT-L/14 vision (:mod:`.clip_vision`) offline. Nothing is imported from
diffusers/transformers/open_clip until a loader is called, so importing this package (e.g. when ComfyUI
imports the node pack) stays cheap and never touches the network.
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
