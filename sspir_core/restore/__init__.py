"""The restore path, LQ -> priors -> sampler -> image.

:mod:`.options` (what a restore is asked to do), :mod:`.prompt` (long-prompt text encoding),
:mod:`.schedulers`, :mod:`.tiling` (latent and VAE tiles), :mod:`.pipeline` (priors, the denoising loop,
:func:`~.pipeline.restore_image`), :mod:`.color_fix`, :mod:`.output_stream` (integer output written tile
by tile), :mod:`.components` (the part-by-part API the ComfyUI nodes use), :mod:`.model_cache`, and the
runtime helpers :mod:`.compile_models` and :mod:`.cpu_heap`.
"""
