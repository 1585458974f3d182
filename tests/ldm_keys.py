"""The LDM single-file writer lives in the core (``sspir demo-models`` uses it); tests import it from here."""

from sspir_core.weights.ldm_writer import clip_text_to_ldm, open_clip_text_to_ldm, unet_to_ldm, vae_to_ldm

__all__ = ["clip_text_to_ldm", "open_clip_text_to_ldm", "unet_to_ldm", "vae_to_ldm"]
