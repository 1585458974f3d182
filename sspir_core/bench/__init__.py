"""Benchmarks behind ``sspir bench``: what the SSP-IR attentions, the per-image priors and tiling cost.

Figures measured in one run on one config, so they can be compared side by side:

1. :mod:`.sampler`: ms per denoising step of our ControlNet + patched UNet (CFG batch 2, as
   ``RestorePipeline.denoise`` runs it, with :class:`~sspir_core.models.fast_paths.FastPaths`) next to the
   plain path (the official computation) and a stock diffusers ControlNet + UNet of the same UNet config;
   ``--ablate`` adds one run per rewrite switched. Also the one-time priors' share of a 50-step run, and a
   whole restore.
2. :mod:`.flops`: model FLOPs per step and per image, and the FLOP rate they imply.
3. :mod:`.memory`: peak memory of a tiled restore at growing output sizes.
4. :mod:`.training`: one training step (time, peak memory, largest batch on CUDA).

:mod:`.settings` holds what a run measures and the random-weight configs, :mod:`.run` the run itself and
:mod:`.report` what it prints. Timings are not asserted anywhere: this is a measuring tool, not a test.
Other modules add parts through :data:`.settings.EXTRA_PARTS` (and summary pieces through
:data:`.settings.EXTRA_SUMMARIES`): :mod:`.one_step` (a one-step restore against a 50-step one) and
:mod:`.native` (the native ComfyUI route against PGA Sampler, in real ComfyUI servers) and :mod:`.dry_run`
(every route at full SD1.5 size on fake CUDA tensors, checked op by op by :mod:`.fake_cuda`, and the VRAM
it implies; no GPU needed).
"""
