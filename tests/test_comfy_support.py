"""Pure helpers behind the nodes: choices, list inputs, model folders, previews, the model cache."""

from __future__ import annotations

import os

import pytest
import torch

from nodes.support import (
    captions_for_batch,
    choose_offload,
    flatten_strings,
    images_from_list,
    list_model_folders,
    list_sspir_choices,
    merge_folder_entry,
    resolve_in_roots,
    single,
    structure_preview,
    target_size,
)
from sspir_core.devices import choose_device, choose_dtype
from sspir_core.errors import CheckpointError, InputError
from sspir_core.restore.model_cache import ModelCache, file_signature


def test_device_dtype_offload_choices_follow_the_host():
    assert choose_device("auto", torch.device("cpu")) == torch.device("cpu")  # ComfyUI --cpu wins over CUDA
    assert choose_device("cpu", torch.device("cuda")) == torch.device("cpu")
    with pytest.raises(InputError, match="is not a device"):
        choose_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available on this machine"):
            choose_device("cuda:0")
    assert choose_dtype("auto", torch.device("cpu")) is torch.float32
    assert choose_dtype("auto", torch.device("cuda")) is torch.float16
    assert choose_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(InputError, match="bf16 is not supported"):
        choose_dtype("bf16", torch.device("cuda"), bf16_supported=False)
    cuda = torch.device("cuda")
    assert choose_offload("auto", low_vram=True, device=cuda) is True
    assert choose_offload("auto", low_vram=False, device=cuda) is False
    assert choose_offload("on", low_vram=False, device=cuda) is True
    assert choose_offload("on", low_vram=True, device=torch.device("cpu")) is False  # nothing to offload to


def test_list_inputs_and_captions():
    assert single("steps", [20, 20]) == 20 and single("steps", 7) == 7
    with pytest.raises(InputError, match="'steps' got 2 different values"):
        single("steps", [20, 30])
    assert flatten_strings([["a", "b"], "c", None]) == ["a", "b", "c"]
    # one string is shared by the batch; a per-image list is kept in order; cleaned like every caption
    assert captions_for_batch(["a  cat\n"], 3) == ["a cat"] * 3
    assert captions_for_batch([["one", "two", "three"]], 3) == ["one", "two", "three"]
    assert captions_for_batch(None, 2) == ["", ""]
    with pytest.raises(InputError, match="got 2 captions for 3 images"):
        captions_for_batch([["x", "y"]], 3)
    with pytest.raises(InputError, match="connect a STRING"):
        flatten_strings([3])
    assert target_size(0, 0) is None and target_size(64, 48) == (64, 48)
    with pytest.raises(InputError, match="set both"):
        target_size(64, 0)


def test_images_from_list_concatenates_batches_and_keeps_alpha():
    a, b = torch.rand(2, 5, 7, 3), torch.rand(1, 5, 7, 4)
    out = images_from_list([a, b])
    assert out.rgb.shape == (3, 3, 5, 7)
    torch.testing.assert_close(out.rgb[:2], a.permute(0, 3, 1, 2))
    assert torch.equal(out.alpha[:2], torch.ones(2, 1, 5, 7)) and torch.equal(
        out.alpha[2:], b[..., 3:].permute(0, 3, 1, 2)
    )
    with pytest.raises(InputError, match="different sizes"):
        images_from_list([a, torch.rand(1, 6, 7, 3)])


def test_structure_preview_crops_padding_scales_and_orders_image_major():
    # padded 16x16 LQ whose real part is 12 (h) x 8 (w); two scales at 1/2 and 1/4 of the padded size
    r2 = torch.full((2, 3, 8, 8), -1.0)
    r2[0, :, :6, :4] = 1.0  # image 0's real part is white at 1/2 scale, the padding black
    r4 = torch.zeros(2, 3, 4, 4)
    out = structure_preview([r2, r4], box=(0, 12, 0, 8), padded=(16, 16))
    assert out.shape == (4, 3, 12, 8)
    assert torch.equal(out[0], torch.ones(3, 12, 8))  # image 0, scale 1/2: white, padding cut away
    assert torch.equal(out[1], torch.full((3, 12, 8), 0.5))  # image 0, scale 1/4: 0 in [-1,1] -> 0.5
    assert torch.equal(out[2], torch.zeros(3, 12, 8))  # image 1, scale 1/2


def test_merge_folder_entry_keeps_extra_model_paths():
    yaml_entry = (["/data/llm"], set())  # what extra_model_paths.yaml leaves: paths, no extensions
    paths, exts = merge_folder_entry(yaml_entry, "/comfy/models/LLM", {"folder"})
    assert paths == ["/comfy/models/LLM", "/data/llm"] and exts == {"folder"}
    assert merge_folder_entry((paths, exts), "/comfy/models/LLM", {"folder"}) == (paths, exts)  # idempotent
    assert merge_folder_entry(None, "/m/sspir", {".safetensors"}) == (["/m/sspir"], {".safetensors"})


def test_model_folder_listing_and_resolution(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for sub in ("run1/checkpoint-10/unet", "run1/checkpoint-10/controlnet", "run1/checkpoint-10/refine"):
        (a / sub).mkdir(parents=True)
    (a / "run1/checkpoint-10/unet/diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (a / "compact.safetensors").write_bytes(b"x")
    (a / "notes.txt").write_text("x")
    (b / "more").mkdir(parents=True)
    (b / "more/other.safetensors").write_bytes(b"x")
    assert list_sspir_choices([a, b, tmp_path / "missing"]) == [
        "compact.safetensors",
        "more/other.safetensors",
        "run1/checkpoint-10",
    ]
    (a / "llava/sub").mkdir(parents=True)
    (a / "llava/config.json").write_text("{}")
    assert list_model_folders([a], "config.json") == ["llava"]
    assert resolve_in_roots([a, b], "more/other.safetensors", "w", "sspir") == b / "more/other.safetensors"
    with pytest.raises(InputError, match="'gone.safetensors' was not found in the sspir folders"):
        resolve_in_roots([a], "gone.safetensors", "sspir_weights", "sspir")
    with pytest.raises(InputError, match="not a name from the sspir folder list"):
        resolve_in_roots([a], "../b/more/other.safetensors", "sspir_weights", "sspir")


def test_model_cache_reloads_a_replaced_file_and_evicts_lru(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"one")
    cache = ModelCache(max_items=2)
    key1 = ("m", file_signature(f))
    assert cache.get(key1, lambda: "A") == "A" and cache.get(key1, lambda: "B") == "A" and cache.loads == 1
    before = f.stat()
    f.write_bytes(b"two")  # the same size: only the modification time tells the files apart
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # a second later, set, not waited for
    key2 = ("m", file_signature(f))
    assert key2 != key1 and cache.get(key2, lambda: "B") == "B"
    cache.get(key1, lambda: "A2")  # touch key1: key2 becomes the least recently used
    cache.get("third", lambda: "C")
    assert key2 not in cache and key1 in cache and len(cache) == 2
    with pytest.raises(CheckpointError, match="not found"):
        file_signature(tmp_path / "missing")
