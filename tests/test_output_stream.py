"""The streamed decode -> colour fix -> 8/16-bit tail against the plain float path it replaces.

Reference: ``tiled_vae_decode`` + ``apply_color_fix`` + the PNG writer's quantising (the existing path,
tested on its own in test_tiling/test_color_fix), on a real (tiny) diffusers VAE over several tiles.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from sspir_core.demo.presets import TINY_VAE
from sspir_core.errors import InputError
from sspir_core.restore.color_fix import apply_color_fix
from sspir_core.restore.output_stream import WAVELET_RADIUS, decode_to_integers, quantize, stream_decoded_rows
from sspir_core.restore.tiling import tiled_vae_decode


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderKL.from_config(TINY_VAE).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def latents():
    return torch.randn(2, 4, 20, 14, generator=torch.Generator().manual_seed(1))


def decode(vae):
    return lambda z: vae.decode(z).sample


@pytest.fixture(scope="module")
def decoded(vae, latents):
    """The plain whole-image tiled decode (tile 6, overlap 2: 4 x 3 tiles), computed once."""
    with torch.no_grad():
        return tiled_vae_decode(decode(vae), latents, tile_latent=6, overlap_latent=2)


def reference(decoded, source, box, method, bits):
    out = decoded.float().clone().add_(1).div_(2).clamp_(0, 1)[..., box[0] : box[1], box[2] : box[3]]
    fixed = apply_color_fix(out, source, method)
    return quantize(fixed, bits)


def test_streamed_rows_are_the_blended_decode(vae, latents, decoded):
    """Every row is emitted once, in order, with the very numbers of the whole-image blend."""
    whole = decoded
    with torch.no_grad():
        chunks = list(stream_decoded_rows(decode(vae), latents, 6, 2))
    assert len(chunks) > 2  # several tile rows: really streamed
    assert [r0 for r0, _ in chunks] == sorted(r0 for r0, _ in chunks) and chunks[0][0] == 0
    rows = torch.cat([c for _, c in chunks], dim=-2)
    assert rows.shape == whole.shape
    assert torch.equal(rows, whole)


@pytest.mark.parametrize("method", ["none", "wavelet", "adain"])
@pytest.mark.parametrize("bits", [8, 16])
def test_streamed_tail_matches_float_path(vae, latents, decoded, method, bits):
    box = (5, 157, 3, 107)  # a crop (padding removed), 152 x 104 px: > 2 x the wavelet radius
    g = torch.Generator().manual_seed(2)
    source = torch.rand(1, 3, box[1] - box[0], box[3] - box[2], generator=g) * 0.6 + 0.2
    ref = reference(decoded, source, box, method, bits)
    with torch.no_grad():
        got = decode_to_integers(decode(vae), latents, source, box, method, bits, 6, 2)
    assert got.dtype == ref.dtype == (torch.uint8 if bits == 8 else torch.uint16)
    assert got.shape == ref.shape == (2, 3, box[1] - box[0], box[3] - box[2])
    diff = (got.int() - ref.int()).abs()
    # Stated tolerance: one output step (float rounding at a .5 boundary; for AdaIN the 16-bit pre-fix store,
    # whose rounding the AdaIN gain magnifies: at 16 bits many pixels may be one step off, never two)
    assert diff.max().item() <= 1, method
    if bits == 8:
        assert (diff > 0).float().mean().item() < 0.01, method
    if method == "none":
        assert torch.equal(got, ref)  # nothing but the same numbers quantised
    assert got.permute(0, 2, 3, 1).is_contiguous()  # what the PNG writer reads, without a copy


@pytest.mark.parametrize("bits", [8, 16])
def test_adain_statistics_in_bands_keep_float64_temporaries_small(vae, latents, decoded, bits, monkeypatch):
    """AdaIN's float64 moments are summed a band of rows at a time: same result, no image-sized float64."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sspir_core.restore import output_stream

    class LargestDouble(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    self.largest = max(self.largest, t.numel())
            return out

    band = 16
    monkeypatch.setattr(output_stream, "ROWS_PER_CHUNK", band)
    box = (5, 157, 3, 107)
    source = torch.rand(1, 3, box[1] - box[0], box[3] - box[2], generator=torch.Generator().manual_seed(2)) * 0.6 + 0.2
    ref = reference(decoded, source, box, "adain", bits)
    with torch.no_grad(), LargestDouble() as doubles:
        got = decode_to_integers(decode(vae), latents, source, box, "adain", bits, 6, 2)
    assert (got.int() - ref.int()).abs().max().item() <= 1  # the tolerance of the whole-image test above
    assert 0 < doubles.largest <= latents.shape[0] * 3 * band * (box[3] - box[2])


def test_wavelet_halo_covers_the_blur():
    """The halo is the blur's reach (1+2+4+8+16): a smaller window would change the result."""
    assert WAVELET_RADIUS == 31


def test_single_tile_and_untiled_are_the_plain_decode(vae, latents):
    source = torch.full((1, 3, 160, 112), 0.5)
    box = (0, 160, 0, 112)
    with torch.no_grad():
        ref = reference(vae.decode(latents).sample, source, box, "adain", 8)
        one = decode_to_integers(decode(vae), latents, source, box, "adain", 8, 64, 16)  # one tile covers it
        untiled = decode_to_integers(decode(vae), latents, source, box, "adain", 8, None, 0)
    assert (one.int() - ref.int()).abs().max() <= 1 and torch.equal(one, untiled)


def test_bad_arguments_are_named(vae, latents):
    src = torch.rand(1, 3, 160, 112)
    with pytest.raises(InputError, match="bit depth"):
        decode_to_integers(decode(vae), latents, src, (0, 160, 0, 112), "none", 12, 6, 2)
    with pytest.raises(InputError, match="colour fix"):
        decode_to_integers(decode(vae), latents, src, (0, 160, 0, 112), "histogram", 8, 6, 2)
    with pytest.raises(InputError, match="source"):
        decode_to_integers(decode(vae), latents, src, (0, 100, 0, 112), "adain", 8, 6, 2)


def test_restore_integer_output_matches_float_restore():
    """The pipeline's streamed tail (tiled VAE, padding crop, AdaIN) against its float tail, quantised."""
    from sspir_core.demo.presets import tiny_random_pipeline
    from sspir_core.restore.pipeline import RestoreOptions, restore_image

    pipe = tiny_random_pipeline(seed=0)
    image = torch.rand(1, 3, 30, 21, generator=torch.Generator().manual_seed(4))  # x4 = 120 x 84: padded
    opts = RestoreOptions(steps=1, tile=8, tile_overlap=4, vae_tile=48, color_fix="adain")
    flt = restore_image(pipe, image, "a cat", opts, upscale=4)
    ints = restore_image(pipe, image, "a cat", opts, upscale=4, output_bits=8)
    assert ints.dtype == torch.uint8 and ints.shape == flt.shape == (1, 3, 120, 84)
    assert (ints.int() - quantize(flt, 8).int()).abs().max() <= 1


def test_png_writer_takes_integer_images(tmp_path):
    from sspir_core.image_io import load_image, save_png

    g = torch.Generator().manual_seed(5)
    img16 = torch.randint(0, 65536, (1, 3, 9, 7), generator=g).to(torch.uint16)
    img8 = torch.randint(0, 256, (1, 3, 9, 7), generator=g).to(torch.uint8)
    alpha = torch.rand(1, 1, 9, 7, generator=g)
    (p16,) = save_png(img16, tmp_path / "a.png")
    (p8,) = save_png(img8, tmp_path / "b.png", alpha=alpha)
    back16, back8 = load_image(p16), load_image(p8)
    assert torch.equal((back16.rgb * 65535).round().int(), img16.int())
    assert torch.equal((back8.rgb * 255).round().int(), img8.int())
    assert torch.equal((back8.alpha * 255).round().int(), (alpha * 255).round().int())
