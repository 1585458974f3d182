"""Offline base-model loaders: tiny models written in the real file formats, plus full-size config checks."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from sspir_core.errors import CheckpointError, InputError
from sspir_core.weights.base_models import (
    CLIP_MEAN,
    CLIP_STD,
    load_clip_vision,
    load_sd_components,
    load_tokenizer,
    sd_config_dir,
)
from sspir_core.weights.bundled_configs import CLIP_VISION_CONFIG, CONFIGS_DIR
from tests import ldm_keys

# ---------------------------------------------------------------------------------------------- fixtures


def _tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
        sample_size=8,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )


def _tiny_text_encoder(base: str) -> CLIPTextModel:
    act = "quick_gelu" if base == "sd15" else "gelu"
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=16,
    )
    return CLIPTextModel(config).eval()


class TinySD:
    """Tiny random SD components, their config folder and their LDM single file."""

    def __init__(self, root: Path, base: str):
        torch.manual_seed(0 if base == "sd15" else 1)
        self.base = base
        self.unet, self.vae, self.text_encoder = _tiny_unet(), _tiny_vae(), _tiny_text_encoder(base)
        self.config_dir = root / f"config_{base}"
        self.unet.save_config(self.config_dir / "unet")
        self.vae.save_config(self.config_dir / "vae")
        self.text_encoder.config.save_pretrained(self.config_dir / "text_encoder")
        shutil.copytree(CONFIGS_DIR / base / "scheduler", self.config_dir / "scheduler")
        text = ldm_keys.clip_text_to_ldm if base == "sd15" else ldm_keys.open_clip_text_to_ldm
        self.state = {
            **ldm_keys.unet_to_ldm(self.unet),
            **ldm_keys.vae_to_ldm(self.vae),
            **text(self.text_encoder),
        }
        self.file = root / f"tiny_{base}.safetensors"
        save_file(self.state, self.file)

    def write(self, path: Path, state: dict) -> Path:
        save_file(state, path)
        return path


@pytest.fixture(scope="module")
def tiny_sd15(tmp_path_factory) -> TinySD:
    return TinySD(tmp_path_factory.mktemp("sd15"), "sd15")


@pytest.fixture(scope="module")
def tiny_sd21(tmp_path_factory) -> TinySD:
    return TinySD(tmp_path_factory.mktemp("sd21"), "sd21")


def _assert_same_weights(expected: torch.nn.Module, loaded: torch.nn.Module) -> None:
    a, b = expected.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# ------------------------------------------------------------------------------------ bundled configs


def test_tokenizers_match_open_clip_and_use_the_right_pad_token():
    import open_clip

    text = "A photo of a Cat, high-quality; restored 4k. Ünïcode café"
    reference = open_clip.get_tokenizer("ViT-L-14")([text])[0].tolist()
    reference = reference[: reference.index(49407) + 1]
    for base, pad in (("sd15", "<|endoftext|>"), ("sd21", "!")):
        tokenizer = load_tokenizer(sd_config_dir(base) / "tokenizer")
        assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
        assert tokenizer(text).input_ids == reference
        assert tokenizer.pad_token == pad
        padded = tokenizer(text, padding="max_length", max_length=77).input_ids
        assert len(padded) == 77 and padded[-1] == (49407 if base == "sd15" else 0)
    # Known quirk of SD2's pad token "!" (stock SD2 tokenizers share it): a literal "!" in the text is matched
    # as the special pad token (id 0), while open_clip, which SD2 was trained with, gives "!</w>" (256).
    assert load_tokenizer(sd_config_dir("sd15") / "tokenizer")("wow!").input_ids[2] == 256
    assert load_tokenizer(sd_config_dir("sd21") / "tokenizer")("wow!").input_ids[2] == 0


def test_assembled_config_dir_is_diffusers_layout_with_the_unet_config_from_its_single_source():
    for base in ("sd15", "sd21"):
        folder = sd_config_dir(base)
        for name in (
            "model_index.json",
            "unet/config.json",
            "vae/config.json",
            "text_encoder/config.json",
            "scheduler/scheduler_config.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json",
            "tokenizer/special_tokens_map.json",
        ):
            assert (folder / name).is_file(), (base, name)
        unet = json.loads((folder / "unet/config.json").read_text())
        assert unet == json.loads((CONFIGS_DIR / base / "unet.json").read_text())
        index = json.loads((folder / "model_index.json").read_text())
        assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
        scheduler = json.loads((folder / "scheduler/scheduler_config.json").read_text())
        assert scheduler["_class_name"] == "DDPMScheduler"
        assert (scheduler["num_train_timesteps"], scheduler["beta_schedule"]) == (1000, "scaled_linear")
        assert (scheduler["beta_start"], scheduler["beta_end"]) == (0.00085, 0.012)
        assert (scheduler["steps_offset"], scheduler["prediction_type"]) == (1, "epsilon")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_full_size_configs_give_the_known_parameter_counts():
    def config(base: str, part: str) -> dict:
        return json.loads((sd_config_dir(base) / part / "config.json").read_text())

    with torch.device("meta"):
        counts = {
            "sd15 vae": _n_params(AutoencoderKL.from_config(config("sd15", "vae"))),
            "sd21 vae": _n_params(AutoencoderKL.from_config(config("sd21", "vae"))),
            "sd15 text": _n_params(CLIPTextModel(CLIPTextConfig(**config("sd15", "text_encoder")))),
            "sd21 text": _n_params(CLIPTextModel(CLIPTextConfig(**config("sd21", "text_encoder")))),
            "sd15 unet": _n_params(UNet2DConditionModel.from_config(config("sd15", "unet"))),
            "sd21 unet": _n_params(UNet2DConditionModel.from_config(config("sd21", "unet"))),
            "clip vision": _n_params(CLIPVisionModel(CLIPVisionConfig(**json.loads(CLIP_VISION_CONFIG.read_text())))),
        }
    assert counts == {
        "sd15 vae": 83_653_863,
        "sd21 vae": 83_653_863,
        "sd15 text": 123_060_480,
        "sd21 text": 340_387_840,
        "sd15 unet": 859_520_964,
        "sd21 unet": 865_910_724,
        "clip vision": 303_179_776,
    }


def test_full_size_ldm_key_sets_match_real_checkpoints():
    """SD1.5 pruned files hold 686 UNet + 248 VAE + 196 text keys (+ position_ids = 1131); names as in real files."""
    from sspir_core.weights.ldm_layout import expected_ldm_keys
    from sspir_core.weights.stable_diffusion import _skeleton_keys

    keys = {}
    for base in ("sd15", "sd21"):
        for part in ("unet", "vae", "text_encoder"):
            config = json.loads((sd_config_dir(base) / part / "config.json").read_text())
            keys[base, part] = set(expected_ldm_keys(part, _skeleton_keys(part, config), config, base))
    counts = {k: len(v) for k, v in keys.items()}
    assert counts[("sd15", "unet")] == counts[("sd21", "unet")] == 686
    assert counts[("sd15", "vae")] == counts[("sd21", "vae")] == 248
    assert counts[("sd15", "text_encoder")] == 196
    assert counts[("sd21", "text_encoder")] == 4 + 23 * 12  # OpenCLIP: packed in_proj, last of 24 layers unused
    sd15 = keys["sd15", "unet"] | keys["sd15", "vae"] | keys["sd15", "text_encoder"]
    for name in (
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
        "model.diffusion_model.out.2.bias",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.3.block.0.conv1.weight",
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    ):
        assert name in sd15, name
    assert "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight" in keys["sd21", "unet"]
    assert "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight" in keys["sd21", "text_encoder"]


def test_bundled_clip_vision_config_is_open_clips_vit_l_14():
    import open_clip

    reference = open_clip.get_model_config("ViT-L-14")
    ours = json.loads(CLIP_VISION_CONFIG.read_text())
    vision = reference["vision_cfg"]
    assert (ours["hidden_size"], ours["num_hidden_layers"]) == (vision["width"], vision["layers"])
    assert (ours["image_size"], ours["patch_size"]) == (vision["image_size"], vision["patch_size"])
    assert ours["hidden_size"] // ours["num_attention_heads"] == vision.get("head_width", 64)
    assert ours["intermediate_size"] == ours["hidden_size"] * vision.get("mlp_ratio", 4)
    assert ours["projection_dim"] == reference["embed_dim"] and ours["hidden_act"] == "quick_gelu"


# -------------------------------------------------------------------------------- single LDM file


@pytest.mark.parametrize("base", ["sd15", "sd21"])
def test_ldm_single_file_round_trips_every_tensor(base, request):
    tiny = request.getfixturevalue(f"tiny_{base}")
    components = load_sd_components(tiny.file, config_dir=tiny.config_dir)
    assert components.base == base  # detected from the text-encoder key layout
    _assert_same_weights(tiny.unet, components.unet)
    _assert_same_weights(tiny.vae, components.vae)
    _assert_same_weights(tiny.text_encoder, components.text_encoder)
    assert components.scheduler_config["prediction_type"] == "epsilon"
    assert len(components.tokenizer) == 49408
    ids = components.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert components.text_encoder(ids).last_hidden_state.shape == (1, 77, 32)


def test_ckpt_pickle_with_nested_state_dict_loads_and_parts_can_be_skipped(tiny_sd15, tmp_path):
    path = tmp_path / "tiny.ckpt"
    without_unet = {k: v for k, v in tiny_sd15.state.items() if not k.startswith("model.diffusion_model.")}
    torch.save({"state_dict": without_unet, "global_step": 10}, path)
    components = load_sd_components(path, base="sd15", parts=("vae",), config_dir=tiny_sd15.config_dir)
    assert components.unet is None and components.text_encoder is None
    _assert_same_weights(tiny_sd15.vae, components.vae)


def test_diffusers_folder(tiny_sd15, tmp_path):
    folder = tmp_path / "pipe"
    tiny_sd15.unet.save_pretrained(folder / "unet")
    tiny_sd15.vae.save_pretrained(folder / "vae")
    tiny_sd15.text_encoder.save_pretrained(folder / "text_encoder")
    for name in ("model_index.json", "scheduler", "tokenizer"):
        source = sd_config_dir("sd15") / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, folder / name)
    components = load_sd_components(folder, base="sd15", dtype=torch.float16)
    assert components.base == "sd15" and components.unet.dtype == torch.float16
    assert torch.equal(
        components.vae.state_dict()["decoder.conv_out.weight"], tiny_sd15.vae.decoder.conv_out.weight.half()
    )
    assert components.tokenizer.pad_token == "<|endoftext|>"
    with pytest.raises(CheckpointError, match="pass base='sd15' or 'sd21'"):
        load_sd_components(folder)  # a tiny UNet's context width (32) tells neither base


# ------------------------------------------------------------------------------------------ errors


def test_missing_keys_are_named_before_conversion(tiny_sd15, tmp_path):
    dropped = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    path = tiny_sd15.write(tmp_path / "pruned.safetensors", {k: v for k, v in tiny_sd15.state.items() if k != dropped})
    with pytest.raises(CheckpointError, match="pruned.safetensors") as info:
        load_sd_components(path, config_dir=tiny_sd15.config_dir)
    assert dropped in str(info.value) and "lacks 1 of" in str(info.value)


def test_wrong_base_is_reported_with_the_detected_one(tiny_sd15, tiny_sd21):
    with pytest.raises(CheckpointError, match=r"Stable Diffusion 1\.x .*base='sd21'.*pass base='sd15'"):
        load_sd_components(tiny_sd15.file, base="sd21", config_dir=tiny_sd15.config_dir)
    with pytest.raises(CheckpointError, match=r"Stable Diffusion 2\.x .*OpenCLIP"):
        load_sd_components(tiny_sd21.file, base="sd15", config_dir=tiny_sd21.config_dir)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_is_named(tiny_sd15, tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": tiny_sd15.state}, whole)
    else:
        shutil.copyfile(tiny_sd15.file, whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"cut{suffix}.*truncated or corrupt"):
        load_sd_components(cut, config_dir=tiny_sd15.config_dir)


def test_other_model_families_are_named(tiny_sd15, tmp_path):
    one = torch.zeros(2)
    sdxl = tiny_sd15.write(
        tmp_path / "xl.safetensors",
        {
            "model.diffusion_model.label_emb.0.0.weight": one,
            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": one.clone(),
        },
    )
    with pytest.raises(CheckpointError, match="xl.safetensors is an SDXL checkpoint"):
        load_sd_components(sdxl)
    unet_only = tiny_sd15.write(tmp_path / "unet.safetensors", {"down_blocks.0.resnets.0.conv1.weight": one})
    with pytest.raises(CheckpointError, match="diffusers-format UNet"):
        load_sd_components(unet_only)
    vision = tiny_sd15.write(tmp_path / "vision.safetensors", {"vision_model.embeddings.class_embedding": one})
    with pytest.raises(CheckpointError, match="CLIP vision model"):
        load_sd_components(vision)
    inpaint = dict(tiny_sd15.state)
    weight = inpaint["model.diffusion_model.input_blocks.0.0.weight"]
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(weight.shape[0], 9, 3, 3)
    path = tiny_sd15.write(tmp_path / "inpaint.safetensors", inpaint)
    with pytest.raises(CheckpointError, match="9 input channels"):
        load_sd_components(path, config_dir=tiny_sd15.config_dir)


def test_undetectable_base_asks_for_it_and_bad_arguments_are_explained(tiny_sd15, tmp_path):
    vae_only = {k: v for k, v in tiny_sd15.state.items() if k.startswith("first_stage_model.")}
    path = tiny_sd15.write(tmp_path / "vae_in_ldm.safetensors", vae_only)
    with pytest.raises(CheckpointError, match="pass base='sd15' or 'sd21'"):
        load_sd_components(path, parts=("vae",), config_dir=tiny_sd15.config_dir)
    assert load_sd_components(path, base="sd15", parts=("vae",), config_dir=tiny_sd15.config_dir).vae is not None
    with pytest.raises(CheckpointError, match="not found"):
        load_sd_components(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="Unknown parts"):
        load_sd_components(tiny_sd15.file, parts=("controlnet",))
    with pytest.raises(CheckpointError, match="Unknown base"):
        load_sd_components(tiny_sd15.file, base="sdxl")


# ------------------------------------------------------------------------------------- CLIP vision

TINY_VISION = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 56,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
    "layer_norm_eps": 1e-5,
}


def _hf_to_open_clip(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Test-only mapping from transformers' CLIP vision layout to the OpenAI/OpenCLIP ``visual.*`` layout."""

    def get(key: str) -> torch.Tensor:
        return state["vision_model." + key]

    out = {
        "visual.class_embedding": get("embeddings.class_embedding"),
        "visual.conv1.weight": get("embeddings.patch_embedding.weight"),
        "visual.positional_embedding": get("embeddings.position_embedding.weight"),
        "visual.proj": state["visual_projection.weight"].T.contiguous(),
    }
    for p in ("weight", "bias"):
        out[f"visual.ln_pre.{p}"] = get(f"pre_layrnorm.{p}")
        out[f"visual.ln_post.{p}"] = get(f"post_layernorm.{p}")
        for i in range(layers):
            hf, oc = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
            out[oc + f"attn.in_proj_{p}"] = torch.cat([get(hf + f"self_attn.{x}_proj.{p}") for x in "qkv"])
            pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2"}
            pairs |= {"mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
            for oc_name, hf_name in pairs.items():
                out[oc + f"{oc_name}.{p}"] = get(hf + f"{hf_name}.{p}")
    return out


@pytest.fixture(scope="module")
def tiny_vision(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_vision")
    torch.manual_seed(2)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).eval()
    # a CLIP file's keys; transformers < 5 already names CLIPVisionModel's own keys "vision_model.*"
    state = {k if k.startswith("vision_model.") else "vision_model." + k: v for k, v in model.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    state["visual_projection.weight"] = torch.randn(32, 64)
    save_file(state, root / "hf.safetensors")
    save_file(_hf_to_open_clip(state, TINY_VISION["num_hidden_layers"]), root / "open_clip.safetensors")
    return model, root


def test_clip_vision_transformers_and_open_clip_files_give_the_same_tokens(tiny_vision):
    model, root = tiny_vision
    hf = load_clip_vision(root / "hf.safetensors", config=TINY_VISION)
    oc = load_clip_vision(root / "open_clip.safetensors", config=TINY_VISION)
    assert (hf.weight_format, oc.weight_format) == ("transformers", "open_clip")
    images = torch.rand(2, 3, 40, 72)
    with torch.no_grad():
        tokens_hf, tokens_oc = hf(images), oc(images)
        hidden = model(pixel_values=hf.preprocess(images), output_hidden_states=True).hidden_states[-1]
    assert tokens_hf.shape == (2, (56 // 14) ** 2, 64) == (2, hf.num_tokens, hf.width)
    torch.testing.assert_close(tokens_oc, tokens_hf, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens_hf, hidden[:, 1:], atol=0, rtol=0)  # last layer, no post-LayerNorm
    post_layernorm = getattr(model, "vision_model", model).post_layernorm  # transformers < 5 nests it
    assert not torch.allclose(tokens_hf, post_layernorm(hidden[:, 1:]), atol=1e-3)


def test_clip_vision_from_a_transformers_folder(tiny_vision, tmp_path):
    model, _ = tiny_vision
    model.save_pretrained(tmp_path / "clip")
    encoder = load_clip_vision(tmp_path / "clip")  # config comes from the folder, not the bundled ViT-L one
    images = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        expected = model(pixel_values=encoder.preprocess(images)).last_hidden_state[:, 1:]
        torch.testing.assert_close(encoder(images), expected, atol=0, rtol=0)


def test_clip_preprocessing_is_squash_resize_and_clip_normalisation(tiny_vision):
    _, root = tiny_vision
    encoder = load_clip_vision(root / "hf.safetensors", config=TINY_VISION)
    colour = torch.tensor([0.2, 0.5, 0.9])
    image = colour.view(1, 3, 1, 1).expand(1, 3, 30, 100)  # non-square: squashed, not cropped
    pixels = encoder.preprocess(image)
    assert pixels.shape == (1, 3, 56, 56)
    expected = (colour - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels, expected.view(1, 3, 1, 1).expand_as(pixels), atol=1e-5, rtol=0)
    # Squash keeps the whole frame: a left/right split stays at the middle column after resizing.
    split = torch.zeros(1, 3, 30, 100)
    split[..., 50:] = 1.0
    row = encoder.preprocess(split)[0, 0, 10]
    assert row[:27].max() < row[29:].min()
    with pytest.raises(InputError):
        encoder(torch.rand(3, 56, 56))


# zyhrainbow/SSP-IR dataloaders/paired_dataset.py (PairedPromptDataset, which train.py uses):
#   clip_mean = [0.48145466, 0.4578275, 0.40821073]; clip_std = [0.26862954, 0.26130258, 0.275777]
#   clip_values = F.interpolate(lq_img.unsqueeze(0), size=(224, 224), mode='bicubic').clamp(0.0, 1.0)
OFFICIAL_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OFFICIAL_CLIP_STD = (0.26862954, 0.26130258, 0.275777)


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Plain (not antialiased) bicubic as a float64 [n_out, n_in] matrix: Keys kernel A = -0.75, half-pixel
    centres (align_corners False), edge taps clamped; the definition torch and OpenCV use."""
    import numpy as np

    a = -0.75

    def w(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0

    m = np.zeros((n_out, n_in))
    for j in range(n_out):
        src = (j + 0.5) * n_in / n_out - 0.5
        i0 = int(np.floor(src))
        for i in range(i0 - 1, i0 + 3):
            m[j, min(max(i, 0), n_in - 1)] += w(src - i)
    return m


@pytest.mark.parametrize("size", [(448, 448), (56, 112)])  # a 2x downscale; a 4x / 2x upscale (overshoots)
def test_clip_input_is_the_official_training_preprocessing(size):
    """Against an independent float64 computation: plain bicubic, clamp, the official mean/std.

    Sizes with scale factors 2, 1/4 and 1/2 make every sample position and kernel weight exact in float32, so
    the only error is float32 rounding of the two 4-tap sums (at most 7 operations x (sum |w| = 1.375)^2 x
    2^-24 = 1.1e-6 in [0, 1] units), divided by the smallest std (0.2613): 4.2e-6; 1e-5 bounds it.
    """
    from sspir_core.weights.clip_vision import ClipVisionEncoder

    encoder = ClipVisionEncoder(torch.nn.Identity(), "transformers", 224, 14, 64)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, *size, generator=g) > 0.5).float()  # 0/1 noise: bicubic overshoots [0, 1]
    my, mx = _bicubic_matrix(size[0], 224), _bicubic_matrix(size[1], 224)
    # two matrix products (optimize=True): the unoptimised four-index einsum took ~100 s at 448 px
    resized = np.einsum("yh,bchw,xw->bcyx", my, images.double().numpy(), mx, optimize=True)
    assert resized.min() < -0.05 and resized.max() > 1.05  # so the clamp is exercised
    mean = np.array(OFFICIAL_CLIP_MEAN).reshape(1, 3, 1, 1)
    std = np.array(OFFICIAL_CLIP_STD).reshape(1, 3, 1, 1)
    expected = torch.from_numpy((resized.clip(0.0, 1.0) - mean) / std)
    got = encoder.preprocess(images)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 224, 224)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_clip_vision_errors_name_the_file_and_what_it_is(tiny_vision, tmp_path):
    _, root = tiny_vision
    with pytest.raises(CheckpointError, match=r"hf\.safetensors holds a width-64 ViT .*ViT-L \(width 1024"):
        load_clip_vision(root / "hf.safetensors")  # bundled ViT-L/14 config vs. the tiny file
    path = tmp_path / "unet.safetensors"
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="unet.safetensors is not a CLIP vision model"):
        load_clip_vision(path)
    cut = tmp_path / "cut.safetensors"
    data = (root / "open_clip.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors.*truncated"):
        load_clip_vision(cut, config=TINY_VISION)


def test_loading_an_open_clip_file_touches_no_process_wide_logging(tiny_vision, monkeypatch, caplog):
    import logging

    root = logging.getLogger()
    added = []
    monkeypatch.setattr(root, "addFilter", lambda f: added.append(f))
    with caplog.at_level(logging.WARNING):
        encoder = load_clip_vision(tiny_vision[1] / "open_clip.safetensors", config=TINY_VISION)
    assert encoder.weight_format == "open_clip"
    assert added == [] and root.filters == []
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]


def test_clip_resize_runs_on_the_cpu_whatever_the_models_device(tiny_vision, monkeypatch):
    import sspir_core.weights.clip_vision as clip_vision

    encoder = load_clip_vision(tiny_vision[1] / "hf.safetensors", config=TINY_VISION)
    images = torch.rand(1, 3, 40, 72)
    reference = encoder.preprocess(images)
    seen = []
    real = clip_vision.F.interpolate
    monkeypatch.setattr(clip_vision.F, "interpolate", lambda x, **k: seen.append(x.device.type) or real(x, **k))
    encoder.to("meta")  # stands in for a device without antialiased bicubic (older MPS)
    out = encoder.preprocess(images)
    assert seen == ["cpu"] and out.device.type == "meta" and out.shape == reference.shape
