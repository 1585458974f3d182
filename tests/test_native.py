"""The native route's ComfyUI-free logic (sspir_core.native): hook layout, schedule, start, text windows, weights.

Expected values come from the official layout (SSP-IR's ``up_blocks.i.pixel_attentions.j`` reads residual
``11 - 3i - j`` on SD1.5), diffusers' schedulers, hand formulas and the existing (fixture-checked) prompt encoder.
"""

from __future__ import annotations

import math

import pytest
import torch

from sspir_core.demo.presets import TINY_UNET, tiny_models
from sspir_core.errors import CheckpointError, InputError
from sspir_core.models.build import base_unet_config
from sspir_core.native.layout import (
    expected_ldm_config,
    hook_sites,
    input_block_count,
    ldm_mismatch,
    residual_shapes,
)
from sspir_core.native.patch import load_native_patch
from sspir_core.native.schedule import (
    leading_steps,
    leading_timesteps,
    paper_start,
    paper_start_applies,
    schedule_sigmas,
    to_ddpm,
)
from sspir_core.native.text import TokenizerIds, encode_windows, layout_pair
from sspir_core.restore.schedulers import make_scheduler

# ComfyUI 0.3.75 model_detection.detect_unet_config for SD1.5 and SDXL (read from its source).
COMFY_SD15 = {
    "in_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
}
COMFY_SDXL = {
    "in_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "context_dim": 2048,
    "use_linear_in_transformer": True,
    "adm_in_channels": 2816,
}


def test_sd15_hook_layout_is_the_official_one():
    cfg = base_unet_config("sd15")
    sites = hook_sites(cfg)
    assert input_block_count(cfg) == 12
    pixel = {s.key: (s.index, s.residual) for s in sites if s.kind == "pixel"}
    assert len(pixel) == 12
    for i in range(4):
        for j in range(3):  # official: up_blocks.i.pixel_attentions.j reads residual 11 - 3i - j
            assert pixel[f"up_blocks.{i}.pixel_attentions.{j}"] == (3 * i + j, 11 - 3 * i - j)
    image = [(s.block, s.index) for s in sites if s.kind == "image"]
    # SpatialTransformers of SD1.5 in LDM terms: input blocks 1,2,4,5,7,8; the middle; output blocks 3..11
    assert image == [("input", k) for k in (1, 2, 4, 5, 7, 8)] + [("middle", 0)] + [("output", k) for k in range(3, 12)]


def test_expected_ldm_config_matches_comfyui_detection_and_refuses_others():
    assert ldm_mismatch(expected_ldm_config(base_unet_config("sd15")), COMFY_SD15) == []
    sd21 = ldm_mismatch(expected_ldm_config(base_unet_config("sd21")), COMFY_SD15)
    assert any(d.startswith("context_dim=768") for d in sd21) and any("use_linear" in d for d in sd21)
    sdxl = ldm_mismatch(expected_ldm_config(base_unet_config("sd15")), COMFY_SDXL)
    assert any(d.startswith("channel_mult") for d in sdxl) and any(d.startswith("context_dim=2048") for d in sdxl)


@pytest.mark.parametrize("steps", [1, 7, 20, 50, 333])
def test_leading_timesteps_are_diffusers(steps):
    for name in ("ddpm", "ddim"):
        scheduler = make_scheduler(name)
        scheduler.set_timesteps(steps)
        assert leading_timesteps(steps) == scheduler.timesteps.tolist()


def test_schedule_sigmas_and_ends():
    alphas = make_scheduler("ddim").alphas_cumprod
    table = ((1 - alphas) / alphas).sqrt()
    ddpm, ddim = schedule_sigmas(table, 50, "ddpm"), schedule_sigmas(table, 50, "ddim")
    assert len(ddpm) == 51 and float(ddpm[0]) == float(table[981]) and float(ddpm[-2]) == float(table[1])
    assert float(ddpm[-1]) == 0.0 and float(ddim[-1]) == float(table[0])
    with pytest.raises(ValueError, match="end"):
        schedule_sigmas(table, 50, "euler")


def _sd_table() -> torch.Tensor:
    """SD's sigma per training timestep, float32 as ComfyUI keeps it: sqrt((1 - a) / a) of diffusers' schedule."""
    alphas = make_scheduler("ddim").alphas_cumprod.double()
    return ((1 - alphas) / alphas).sqrt().float()


def _ddim_uniform(table: torch.Tensor, steps: int) -> torch.Tensor:
    """ComfyUI's ddim_uniform as it behaves: every (T // steps)-th timestep from t=1 up, top first, then 0."""
    ts = list(range(1, len(table), len(table) // steps))[::-1]
    return torch.cat([table[ts], torch.zeros(1)])


def _simple(table: torch.Tensor, steps: int) -> torch.Tensor:
    """ComfyUI's simple as it behaves: timestep T - 1 - floor(x T / steps) for x = 0 .. steps - 1, then 0."""
    ts = [len(table) - 1 - math.floor(x * len(table) / steps) for x in range(steps)]
    return torch.cat([table[ts], torch.zeros(1)])


def _partial(schedule, table: torch.Tensor, steps: int, denoise: float) -> torch.Tensor:
    """KSampler at denoise < 1: the last steps + 1 sigmas of the schedule for int(steps / denoise) steps."""
    return schedule(table, int(steps / denoise))[-(steps + 1) :]


def test_leading_steps_inverts_the_leading_schedule():
    for n in range(2, 999):  # several N can share their first two timesteps (1000 // 49 = 1000 // 50)
        t = leading_timesteps(n)
        m = leading_steps(t[0], t[1])
        assert m is not None and leading_timesteps(m)[:2] == t[:2]
    assert leading_steps(901, 801) == 10 and leading_steps(981, 961) == 50 and leading_steps(501, 1) == 2
    assert leading_steps(640, 569) is None and leading_steps(1, 0) is None and leading_steps(801, 701) is None


def test_paper_start_applies_to_full_denoise_only():
    """Hand cases: which ComfyUI samplings start the paper's way (t=999) and which are img2img."""
    table = _sd_table()
    full = {
        "SSP-IR Schedule 50": schedule_sigmas(table, 50, "ddim"),
        "SSP-IR Schedule 2": schedule_sigmas(table, 2, "ddpm"),
        "SSP-IR Schedule 10, first part of a split at 3": schedule_sigmas(table, 10)[:4],
        "ddim_uniform 10 (= leading 10: 901, 801, ...)": _ddim_uniform(table, 10),
        "ddim_uniform 6 (997, 831, ...: uniform from t=1, at its top)": _ddim_uniform(table, 6),
        "ddim_uniform 3 (667, 334, 1)": _ddim_uniform(table, 3),
        "simple 10 (from t=999, the table's top)": _simple(table, 10),
        "karras-like from sigma_max": torch.tensor([float(table[-1]), 3.0, 0.5, 0.0]),
    }
    img2img = {
        "ddim_uniform 10 at 0.7 (640, 569)": _partial(_ddim_uniform, table, 10, 0.7),
        "ddim_uniform 20 at 0.7 (666, 631)": _partial(_ddim_uniform, table, 20, 0.7),
        "ddim_uniform 5 at 0.7 (569, 427: r = 142 is not 1000 // 5)": _partial(_ddim_uniform, table, 5, 0.7),
        "simple 4 at 0.7 (799, 599)": _partial(_simple, table, 4, 0.7),
        "KSamplerAdvanced ddim_uniform 4 from step 1 (501, 251)": _ddim_uniform(table, 4)[1:],
        "SSP-IR Schedule 4, second part of a split at 1 (501, 251)": schedule_sigmas(table, 4)[1:],
        "SSP-IR Schedule 10 from step 1 (801, 701)": schedule_sigmas(table, 10)[1:],
        "not table values": schedule_sigmas(table, 10) * (1 + 1e-6),
        "karras-like below sigma_max": torch.tensor([8.0, 3.0, 0.5, 0.0]),
        "one sigma": table[981:982],
        "nothing": torch.zeros(0),
    }
    assert {k: paper_start_applies(v, table) for k, v in full.items()} == dict.fromkeys(full, True)
    assert {k: paper_start_applies(v, table) for k, v in img2img.items()} == dict.fromkeys(img2img, False)


def test_paper_start_ambiguity_is_only_identical_sigmas():
    """A partial sampling gets the paper's start only where its first two sigmas are a full one's: ddim_uniform
    39 at denoise 0.975 begins exactly as SSP-IR Schedule 39, and SSP-IR Schedule 50 from step 1 as 49
    (1000 // 49 = 20 too), so nothing can tell them apart; SSP-IR Schedule 1 (t=1 alone) is a last step."""
    table = _sd_table()
    partial = _partial(_ddim_uniform, table, 39, 0.975)
    assert torch.equal(partial[:2], schedule_sigmas(table, 39)[:2]) and paper_start_applies(partial, table)
    assert torch.equal(schedule_sigmas(table, 50)[1:], schedule_sigmas(table, 49))
    assert paper_start_applies(schedule_sigmas(table, 50)[1:], table)
    assert not paper_start_applies(schedule_sigmas(table, 1), table)


def test_paper_start_is_the_official_latent_at_the_first_sigma():
    """x / sqrt(1 + s^2) at the first sigma is sqrt(a999) x0 + sqrt(1 - a999) eps (hand formula)."""
    alphas = make_scheduler("ddpm").alphas_cumprod.double()
    table = ((1 - alphas) / alphas).sqrt()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64).unbind(0)
    first = float(table[981])
    x = paper_start(x0, eps, first, float(table[999]))
    official = alphas[999].sqrt() * x0 + (1 - alphas[999]).sqrt() * eps
    assert torch.allclose(x / math.sqrt(1 + first**2), official, atol=1e-12)
    assert torch.allclose(to_ddpm(x, first), official, atol=1e-12)


class _Encoder:
    """A text encoder stand-in whose output at each position is a function of (id, position): chunk boundaries
    and the join become visible in the result."""

    def __call__(self, ids: torch.Tensor):
        pos = torch.arange(ids.shape[1], dtype=torch.float64)
        return (torch.stack([ids.double(), pos.expand_as(ids)], dim=-1),)


def test_windows_through_a_host_encoder_equal_the_reference_encoder():
    from sspir_core.restore.prompt import encode_prompt_pair
    from sspir_core.weights import load_tokenizer, sd_config_dir

    clip_tokenizer = load_tokenizer(sd_config_dir("sd15") / "tokenizer")
    tok = TokenizerIds(
        clip_tokenizer, clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id, clip_tokenizer.pad_token_id
    )
    captions = ["a photo " * 60, "a cat " * 70]  # both 2 chunks
    pos, neg = layout_pair(tok, captions, "blurry", 4)
    assert pos.num_chunks == 2 and pos.input_ids.shape == neg.input_ids.shape == (2, 152)
    enc = _Encoder()

    def host(windows):  # ComfyUI's CLIP: every 77-id window encoded alone, outputs concatenated
        return torch.cat([enc(torch.tensor([w]))[0] for w in windows], dim=1)

    ref_pos, ref_neg = encode_prompt_pair(enc, clip_tokenizer, captions, "blurry", 4)
    assert torch.equal(encode_windows(pos, host), ref_pos) and torch.equal(encode_windows(neg, host), ref_neg)
    mixed = ["short", "a cat " * 70]  # 1 and 2 chunks
    with pytest.raises(InputError, match="different numbers of 75-token chunks"):
        layout_pair(tok, mixed, "", 4, "refuse")
    # padded: the official code's batched layout, which the reference encoder gives a batch (its longest count)
    pos, neg = layout_pair(tok, mixed, "", 4)
    assert pos.num_chunks == 2
    short_ids = clip_tokenizer("short", add_special_tokens=False)["input_ids"]
    pad = clip_tokenizer.pad_token_id
    assert pos.input_ids[0].tolist() == [
        clip_tokenizer.bos_token_id,
        *short_ids,
        *[pad] * (150 - len(short_ids)),
        clip_tokenizer.eos_token_id,
    ]
    ref_pos, ref_neg = encode_prompt_pair(enc, clip_tokenizer, mixed, "", 4)
    assert torch.equal(encode_windows(pos, host), ref_pos) and torch.equal(encode_windows(neg, host), ref_neg)
    with pytest.raises(InputError, match="mixed lengths"):
        layout_pair(tok, mixed, "", 4, "group")


def test_a_caption_past_the_chunks_is_cut_with_the_reference_routes_warning(caplog):
    """A 2000-word caption keeps 4 x 75 tokens on both routes; the native route says so as the reference does."""
    import logging

    from sspir_core.weights import load_tokenizer, sd_config_dir

    clip_tokenizer = load_tokenizer(sd_config_dir("sd15") / "tokenizer")
    tok = TokenizerIds(
        clip_tokenizer, clip_tokenizer.bos_token_id, clip_tokenizer.eos_token_id, clip_tokenizer.pad_token_id
    )
    words = 2000
    with caplog.at_level(logging.WARNING):
        pos, _ = layout_pair(tok, ["fine", "cat " * words], "", 4)
    assert pos.num_chunks == 4
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # "cat " is one token each (hand-checked below); the first caption fits and is not named
    assert len(clip_tokenizer("cat " * 3, add_special_tokens=False)["input_ids"]) == 3
    assert len(lines) == 1 and f"has {words} tokens: only the first 300 are used" in lines[0], lines
    assert lines[0].startswith("caption 2 ")


def test_native_patch_loads_only_sspir_parts_from_both_layouts(tmp_path):
    from sspir_core.weights.checkpoint import save_compact, save_official_checkpoint

    models = tiny_models(seed=3)
    compact = save_compact(models, tmp_path / "w.safetensors")
    official = save_official_checkpoint(models, tmp_path / "checkpoint-1")
    for source in (compact, official):
        patch = load_native_patch(source)
        for site in patch.sites:
            ours = patch.attention(site.key).state_dict()
            theirs = models.unet.get_submodule(site.key).state_dict()
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert all(
            torch.equal(a, b)
            for a, b in zip(patch.controlnet.state_dict().values(), models.controlnet.state_dict().values())
        )
        sspir = [*models.controlnet.parameters(), *models.unet.sspir_parameters(), *models.refine.parameters()]
        assert sum(p.numel() for p in patch.parameters()) == sum(p.numel() for p in sspir)  # no SD UNet weights
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_native_patch(bad)


def test_native_patch_attention_and_control_run_like_the_reference_modules():
    """NativePatch.attend/control are the reference modules on the CFG layout (k copies of B rows)."""
    models = tiny_models(seed=4)
    patch = load_native_patch_from(models)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 256, 512, generator=g)
    h = torch.randn(2, 24, 8, 8, generator=g)
    site = next(s for s in patch.sites if s.kind == "image")
    ref = models.unet.get_submodule(site.key)(h, encoder_hidden_states=emb.repeat(2, 1, 1)).sample
    assert torch.allclose(patch.attend(site.key, h, emb), ref, atol=1e-6)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 77, TINY_UNET["cross_attention_dim"], generator=g)
    feats = torch.randn(1, 24, 8, 8, generator=g)
    downs, mid = patch.control(x, torch.tensor([500.0, 500.0]), text, emb, feats, 0.7)
    out = models.controlnet(
        x,
        torch.tensor([500, 500]),
        text,
        processor_features=feats.repeat(2, 1, 1, 1),
        conditioning_scale=0.7,
        image_encoder_hidden_states=emb.repeat(2, 1, 1),
        return_rgbs=False,
    )
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(downs, out.down_residuals))
    assert torch.allclose(mid, out.mid_residual, atol=1e-6)


def test_sd15_residual_shapes_are_the_official_ones():
    """SD1.5, 64x64 latent (512 px): conv_in + 2 layers per level at 320/640/1280/1280, halved after levels 0-2
    (the 12 ControlNet residuals, read off the official UNet's skips)."""
    cfg = dict(base_unet_config("sd15"))
    expected = [(320, 64, 64)] * 3 + [(320, 32, 32)]
    expected += [(640, 32, 32)] * 2 + [(640, 16, 16)] + [(1280, 16, 16)] * 2 + [(1280, 8, 8)] * 3
    assert residual_shapes(cfg, 64, 64) == expected


@pytest.mark.parametrize("padding", [1, 0])
def test_residual_shapes_match_the_controlnets_residuals(padding):
    """The pure shapes equal those of the residuals a real (tiny) ControlNet returns, on odd latent sizes where
    the downsampling rounds, with both of diffusers' downsample paddings."""
    from sspir_core.models.controlnet import controlnet_config_from_unet, make_controlnet

    config = controlnet_config_from_unet({**TINY_UNET, "downsample_padding": padding})
    torch.manual_seed(0)
    net = make_controlnet(config).eval()
    assert net.config.downsample_padding == padding
    g = torch.Generator().manual_seed(2)
    for h, w in [(9, 13), (8, 6), (7, 7)]:
        x = torch.randn(1, 4, h, w, generator=g)
        feats = torch.randn(1, TINY_UNET["block_out_channels"][0], h, w, generator=g)
        text = torch.randn(1, 77, TINY_UNET["cross_attention_dim"], generator=g)
        emb = torch.randn(1, 256, 512, generator=g)
        with torch.no_grad():
            out = net(x, torch.tensor([10]), text, processor_features=feats, image_encoder_hidden_states=emb)
        got = [tuple(r.shape[1:]) for r in out.down_residuals]
        assert residual_shapes(net.config, h, w) == got, (h, w)


def load_native_patch_from(models):
    from sspir_core.native.patch import NativePatch

    attentions = {s.key: models.unet.get_submodule(s.key) for s in hook_sites(dict(models.unet.config))}
    return NativePatch(models.controlnet, models.refine, attentions, dict(models.unet.config), "sd15").eval()


# ---------------------------------------------------------------------------------------------- latent tiles


def _grid(h: int, w: int) -> torch.Tensor:
    """[1, 1, h, w] whose value at (i, j) is 100 i + j: a crop shows where it was cut from."""
    i = torch.arange(h, dtype=torch.float32)[:, None]
    j = torch.arange(w, dtype=torch.float32)[None, :]
    return (100 * i + j)[None, None]


def test_crop_control_cuts_each_level_under_the_tile():
    """A 6x10 latent halves (with ceil) to 3x5, 2x3, 1x2. The tile rows 0-6, columns 4-10 (6x6) is, by hand:
    level 1 columns 4-10; level 2 (3x3) columns 2-5; level 4 (2x2) columns 1-3; level 8 (1x1) column 0 (its
    start 4 // 8 = 0). None entries and non-list values pass through."""
    from sspir_core.native.tiles import crop_control

    control = {
        "output": [_grid(6, 10), _grid(3, 5), None],
        "middle": [_grid(2, 3)],
        "input": [_grid(1, 2)],
        "other": "kept",
    }
    out = crop_control(control, (0, 6, 4, 10), (6, 10))
    assert torch.equal(out["output"][0], _grid(6, 10)[..., 0:6, 4:10])
    assert out["output"][1].flatten().tolist() == [2, 3, 4, 102, 103, 104, 202, 203, 204]
    assert out["output"][2] is None
    assert out["middle"][0].flatten().tolist() == [1, 2, 101, 102]
    assert out["input"][0].flatten().tolist() == [0]
    assert out["other"] == "kept"
    assert crop_control(None, (0, 1, 0, 1), (6, 10)) is None


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [(12, 20, 8, 4), (13, 9, 8, 3), (40, 24, 16, 8)])
def test_crop_control_gives_the_sizes_the_unet_gives_a_tile(h, w, tile, overlap):
    """Property: at every level, each tile's crop has the size the UNet's own ceil-halvings give that tile."""
    from sspir_core.native.tiles import crop_control
    from sspir_core.restore.tiling import tile_grid

    levels = [(h, w)]
    for _ in range(3):
        levels.append((-(-levels[-1][0] // 2), -(-levels[-1][1] // 2)))
    control = {"output": [torch.zeros(1, 2, *hw) for hw in levels]}
    for box in tile_grid(h, w, tile, overlap):
        th, tw = box[1] - box[0], box[3] - box[2]
        want = [(th, tw)]
        for _ in range(3):
            want.append((-(-want[-1][0] // 2), -(-want[-1][1] // 2)))
        got = [tuple(t.shape[-2:]) for t in crop_control(control, box, (h, w))["output"]]
        assert got == want, box


def test_crop_control_refuses_a_residual_of_another_size():
    from sspir_core.native.tiles import crop_control

    with pytest.raises(InputError, match="tile to 0"):
        crop_control({"output": [torch.zeros(1, 1, 5, 5)]}, (0, 4, 0, 4), (8, 8))
