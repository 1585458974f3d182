"""The native route's ComfyUI-free logic: SSP-IR as a patch on a ComfyUI (LDM-layout) SD UNet.

- :mod:`.layout`: where each SSP-IR attention sits in the LDM UNet (``input_blocks``/``middle_block``/
  ``output_blocks``) and which ControlNet residual each pixel attention reads; the UNet shape a patch needs.
- :mod:`.schedule`: the paper's DDPM "leading" timesteps as sigmas, and its start (the LQ latent noised to
  t=999) in the k-diffusion parametrisation ComfyUI samples in.
- :mod:`.patch`: the SSP-IR weights without the SD UNet (ControlNet + Processor, Refine layer, the image and
  pixel attentions), loaded from a compact file or an official ``checkpoint-N/`` folder, and run on tensors.
- :mod:`.control`: its ControlNet residuals added to another ControlNet's in the ``control`` dict the UNet reads.
- :mod:`.tiles`: another ControlNet's residuals cut to one latent tile of a tiled model call.

Nothing here imports ComfyUI; ``nodes/native_*.py`` hold the glue.
"""
