"""Image loading/saving/conversion: values checked against hand-computed pixels and independent decoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sspir_core.errors import InputError
from sspir_core.image_io import (
    bchw_to_comfy,
    comfy_to_bchw,
    load_image,
    pad_to_multiple,
    prepare_lq,
    save_png,
)


def rgb_array(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def as_bchw(arr: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float64) / scale).float().permute(2, 0, 1).unsqueeze(0)


# ----------------------------------------------------------------------------------------------- loading


def test_load_rgb_png_exact(tmp_path):
    arr = rgb_array(5, 7)
    Image.fromarray(arr, "RGB").save(tmp_path / "a.png")
    rgb, alpha = load_image(tmp_path / "a.png")
    assert rgb.shape == (1, 3, 5, 7) and rgb.dtype == torch.float32 and alpha is None
    torch.testing.assert_close(rgb, as_bchw(arr, 255.0), atol=1e-7, rtol=0)


def test_load_rgba_keeps_colour_and_returns_alpha(tmp_path):
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[..., :3] = [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [51, 102, 153]]]
    arr[..., 3] = [[255, 0], [128, 51]]
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    rgb, alpha = load_image(tmp_path / "a.png")
    # not composited: the fully transparent green pixel is still green
    torch.testing.assert_close(rgb, as_bchw(arr[..., :3], 255.0), atol=1e-7, rtol=0)
    assert alpha.shape == (1, 1, 2, 2)
    torch.testing.assert_close(alpha[0, 0], torch.tensor([[1.0, 0.0], [128 / 255, 0.2]]), atol=1e-6, rtol=0)


def test_load_grayscale_and_gray_alpha(tmp_path):
    Image.fromarray(np.array([[0, 51], [204, 255]], dtype=np.uint8), "L").save(tmp_path / "g.png")
    rgb, alpha = load_image(tmp_path / "g.png")
    expected = torch.tensor([[0.0, 0.2], [0.8, 1.0]])
    assert alpha is None
    for c in range(3):
        torch.testing.assert_close(rgb[0, c], expected, atol=1e-6, rtol=0)
    la = np.stack([np.array([[0, 51], [204, 255]], dtype=np.uint8), np.full((2, 2), 102, np.uint8)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    rgb, alpha = load_image(tmp_path / "la.png")
    torch.testing.assert_close(rgb[0, 1], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha, torch.full((1, 1, 2, 2), 0.4), atol=1e-6, rtol=0)


def test_load_16bit_grayscale_scales_by_65535(tmp_path):
    vals = np.array([[0, 255], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(vals).save(tmp_path / "g16.png")  # Pillow writes a 16-bit grayscale PNG
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    rgb, alpha = load_image(tmp_path / "g16.png")
    expected = torch.tensor([[0.0, 255 / 65535], [32768 / 65535, 1.0]])
    assert alpha is None and rgb.max() <= 1.0
    torch.testing.assert_close(rgb[0, 2], expected, atol=1e-7, rtol=0)


def test_load_16bit_tiff(tmp_path):
    vals = np.array([[1000, 60000]], dtype=np.uint16)
    Image.fromarray(vals).save(tmp_path / "g16.tif")
    rgb, _ = load_image(tmp_path / "g16.tif")
    torch.testing.assert_close(rgb[0, 0], torch.tensor([[1000 / 65535, 60000 / 65535]]), atol=1e-7, rtol=0)


def test_16bit_rgb_png_roundtrip_keeps_16_bits(tmp_path):
    vals = np.array([[[0, 1, 65535], [258, 40000, 12345]]], dtype=np.uint16)  # 1x2 RGB
    x = as_bchw(vals, 65535.0)
    (path,) = save_png(x, tmp_path / "c16.png", bits=16)
    # an independent decoder sees the same picture: Pillow reduces 16-bit RGB to the high byte
    assert Image.open(path).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), (vals >> 8).astype(np.uint8))
    rgb, alpha = load_image(path)
    assert alpha is None
    torch.testing.assert_close(rgb, x, atol=1e-7, rtol=0)
    assert abs(rgb[0, 1, 0, 0].item() - 1 / 65535) < 1e-8  # a value 8-bit could not hold


def test_16bit_rgb_png_without_torchvision_decoder_falls_back_to_8bit(tmp_path, monkeypatch):
    import sspir_core.image_io as image_io

    vals = np.array([[[0, 1000, 65535], [258, 40000, 12345]]], dtype=np.uint16)
    (path,) = save_png(as_bchw(vals, 65535.0), tmp_path / "c16.png", bits=16)
    monkeypatch.setattr(image_io, "_load_png16", lambda p: None)
    rgb, _ = load_image(path)
    # Pillow keeps the high byte: still scaled to [0, 1], within one 8-bit step of the 16-bit value
    torch.testing.assert_close(rgb, as_bchw((vals >> 8).astype(np.uint8), 255.0), atol=1e-7, rtol=0)
    torch.testing.assert_close(rgb, as_bchw(vals, 65535.0), atol=1 / 255, rtol=0)


def test_16bit_rgba_png_roundtrip(tmp_path):
    x = torch.rand(1, 3, 6, 5)
    a = torch.rand(1, 1, 6, 5)
    (path,) = save_png(x, tmp_path / "c16a.png", bits=16, alpha=a)
    rgb, alpha = load_image(path)
    torch.testing.assert_close(rgb, x, atol=0.51 / 65535, rtol=0)
    torch.testing.assert_close(alpha, a, atol=0.51 / 65535, rtol=0)


def test_load_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    rgb, alpha = load_image(tmp_path / "p.png")
    assert alpha is None
    torch.testing.assert_close(rgb[0, :, 0, :], torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    pal.save(tmp_path / "pt.png", transparency=1)
    rgb, alpha = load_image(tmp_path / "pt.png")
    torch.testing.assert_close(alpha[0, 0], torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_load_cmyk(tmp_path):
    arr = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(arr, "CMYK").save(tmp_path / "c.tif")
    rgb, alpha = load_image(tmp_path / "c.tif")
    assert alpha is None
    # white, cyan, black
    expected = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(rgb[0, :, 0, :], expected)


def test_load_bilevel(tmp_path):
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1").save(tmp_path / "b.png")
    rgb, _ = load_image(tmp_path / "b.png")
    torch.testing.assert_close(rgb[0, :, 0, :], torch.tensor([[0.0, 1.0]] * 3))


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((8, 16, 3), dtype=np.uint8)
    arr[:, :8] = [255, 0, 0]  # left half red
    arr[:, 8:] = [0, 0, 255]  # right half blue
    img = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "o.png", exif=exif.tobytes())
    rgb, _ = load_image(tmp_path / "o.png")
    assert rgb.shape == (1, 3, 16, 8)  # portrait after rotation
    # rotating clockwise puts the left half on top
    torch.testing.assert_close(rgb[0, :, :8].mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(rgb[0, :, 8:].mean(dim=(1, 2)), torch.tensor([0.0, 0.0, 1.0]))


def test_exif_orientation_applied_on_16bit_png(tmp_path):
    vals = np.zeros((4, 6), dtype=np.uint16)
    vals[:, :3] = 65535  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(vals).save(tmp_path / "o16.png", exif=exif.tobytes())
    rgb, _ = load_image(tmp_path / "o16.png")
    assert rgb.shape == (1, 3, 6, 4)
    assert rgb[0, 0, :3].min() == 1.0 and rgb[0, 0, 3:].max() == 0.0


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(InputError, match="notes.png"):
        load_image(bad)
    with pytest.raises(InputError, match="not found.*missing.png"):
        load_image(tmp_path / "missing.png")
    Image.fromarray(rgb_array(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        load_image(tmp_path / "cut.png")


# ------------------------------------------------------------------------------------------ ComfyUI IMAGE


def test_comfy_conversions():
    x = torch.rand(2, 5, 7, 3)
    rgb, alpha = comfy_to_bchw(x)
    assert rgb.shape == (2, 3, 5, 7) and alpha is None
    assert torch.equal(rgb[1, 2, 4, 6], x[1, 4, 6, 2])
    assert torch.equal(bchw_to_comfy(rgb), x)

    x4 = torch.rand(1, 4, 3, 4)
    rgb, alpha = comfy_to_bchw(x4)
    assert torch.equal(alpha[0, 0], x4[0, :, :, 3]) and torch.equal(rgb[0, 0], x4[0, :, :, 0])
    assert torch.equal(bchw_to_comfy(rgb, alpha), x4)

    g = torch.rand(1, 3, 4, 1)
    rgb, _ = comfy_to_bchw(g)
    for c in range(3):
        assert torch.equal(rgb[0, c], g[0, :, :, 0])

    u8 = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8)
    rgb, _ = comfy_to_bchw(u8)
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))
    rgb, _ = comfy_to_bchw(torch.full((1, 2, 2, 3), 1.02))
    assert rgb.max() == 1.0


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(5, 7, 3), "B, H, W, C"),
        (torch.rand(1, 5, 7, 2), "C = 1, 3 or 4"),
        (torch.rand(0, 5, 7, 3), "empty"),
        (torch.full((1, 2, 2, 3), float("nan")), "NaN"),
        (torch.zeros(1, 2, 2, 3, dtype=torch.int64), "float"),
    ],
)
def test_comfy_bad_input(bad, match):
    with pytest.raises(InputError, match=match):
        comfy_to_bchw(bad)


# ----------------------------------------------------------------------------------------------- saving


def test_save_png_8bit_and_batch_names(tmp_path):
    x = torch.rand(2, 3, 4, 5)
    paths = save_png(x, tmp_path / "out" / "img.png")
    assert [p.name for p in paths] == ["img_0000.png", "img_0001.png"]
    for i, p in enumerate(paths):
        arr = np.asarray(Image.open(p))
        expected = np.round(x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(arr, expected)
    (single,) = save_png(x[0], tmp_path / "one.png", alpha=torch.ones(1, 4, 5))
    assert single.name == "one.png" and Image.open(single).mode == "RGBA"


def test_save_png_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="8 or 16"):
        save_png(torch.rand(1, 3, 2, 2), tmp_path / "a.png", bits=12)
    with pytest.raises(InputError, match="NaN"):
        save_png(torch.full((1, 3, 2, 2), float("nan")), tmp_path / "a.png")
    with pytest.raises(InputError, match="3 channels"):
        save_png(torch.rand(1, 4, 2, 2), tmp_path / "a.png")


# ------------------------------------------------------------------------------------------ LQ preparation


def pil_bicubic(x: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
    """Independent reference: Pillow's bicubic on float32 ("F") planes, one channel at a time."""
    planes = [
        torch.from_numpy(np.array(Image.fromarray(x[0, c].numpy(), mode="F").resize(size_wh, Image.BICUBIC)))
        for c in range(x.shape[1])
    ]
    return torch.stack(planes).unsqueeze(0).clamp(0, 1)


def test_prepare_lq_upscale_matches_pillow_bicubic_and_pads():
    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    prep = prepare_lq(x, upscale=4.0)
    image, box = prep
    assert box == (0, 20, 0, 28) and prep.size == (28, 20)
    assert image.shape == (1, 3, 24, 32)
    resized = prep.crop(image)
    torch.testing.assert_close(resized, pil_bicubic(x, (28, 20)), atol=1e-5, rtol=0)
    assert image.min() >= 0 and image.max() <= 1
    # reflect padding: row 20 mirrors row 18, row 23 mirrors row 15; column 28 mirrors 26 ...
    torch.testing.assert_close(image[..., 20:24, :28], resized[..., 15:19, :].flip(-2))
    torch.testing.assert_close(image[..., :20, 28:32], resized[..., :, 23:27].flip(-1))


def test_prepare_lq_target_size_and_downscale_antialias():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(96), indexing="ij")
    checker = ((yy + xx) % 2).float().expand(1, 3, 64, 96).contiguous()
    prep = prepare_lq(checker, target_size=(24, 16))
    assert prep.box == (0, 16, 0, 24) and prep.image.shape == (1, 3, 16, 24)
    # antialiased downscale of a 1-px checkerboard is flat grey (no aliasing pattern)
    torch.testing.assert_close(prep.image, torch.full_like(prep.image, 0.5), atol=0.02, rtol=0)
    torch.testing.assert_close(prep.image, pil_bicubic(checker, (24, 16)), atol=1e-5, rtol=0)


def test_prepare_lq_identity_size_and_clamp():
    x = torch.rand(2, 3, 16, 24)
    prep = prepare_lq(x, upscale=1.0)
    assert torch.equal(prep.image, x) and prep.box == (0, 16, 0, 24)
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0
    raw = F.interpolate(step, scale_factor=4, mode="bicubic", antialias=True)
    assert raw.max() > 1.0 and raw.min() < 0.0  # bicubic overshoots a step ...
    out = prepare_lq(step, upscale=4).image
    assert out.max() <= 1.0 and out.min() >= 0.0  # ... which prepare_lq clamps


def test_pad_falls_back_to_replicate_when_too_small():
    x = torch.rand(1, 3, 9, 10)
    padded, box = pad_to_multiple(x, 32)  # pad 23 >= 9: reflect impossible
    assert padded.shape == (1, 3, 32, 32) and box == (0, 9, 0, 10)
    assert torch.equal(padded[..., 9:, :10], x[..., 8:9, :].expand(-1, -1, 23, -1))
    assert torch.equal(padded[..., :9, 10:], x[..., :, 9:10].expand(-1, -1, -1, 22))
    prep = prepare_lq(torch.rand(1, 3, 3, 3), upscale=3.0, multiple=16)
    assert prep.image.shape == (1, 3, 16, 16) and prep.box == (0, 9, 0, 9)


def test_prepare_lq_rejects_unusable_input():
    with pytest.raises(InputError, match=r"1x40 px.*at least 2 px.*at least 8 px"):
        prepare_lq(torch.rand(1, 3, 40, 1))
    with pytest.raises(InputError, match=r"4x4 px.*at least 8 px on each side after upscaling"):
        prepare_lq(torch.rand(1, 3, 4, 4), upscale=1.0)
    with pytest.raises(InputError, match="empty"):
        prepare_lq(torch.rand(1, 3, 0, 5))
    with pytest.raises(InputError, match="4 dimensions"):
        prepare_lq(torch.rand(3, 16, 16))
    with pytest.raises(InputError, match="3 channels"):
        prepare_lq(torch.rand(1, 4, 16, 16))
    with pytest.raises(InputError, match="NaN"):
        prepare_lq(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(InputError, match="upscale"):
        prepare_lq(torch.rand(1, 3, 16, 16), upscale=0)
    with pytest.raises(InputError, match="target_size"):
        prepare_lq(torch.rand(1, 3, 16, 16), target_size=(32,))
