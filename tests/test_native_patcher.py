"""SSP-IR Patch Loader's patcher on both shapes of the host's patcher API (fakes in tests/fake_comfy.py).

0.3.75: a plain ``ModelPatcher``, as before. 0.33.0: built as its model-patch loaders build theirs
(``CoreModelPatcher``, archived dtypes, a ``cached_patcher_init`` factory), so a MultiGPU deep clone reloads the
weights and each UNet copy finds the SSP-IR weights on its own device. The real 0.33.0 deep clone runs in
tests/comfyui/test_native_contract.py; CUDA dynamic VRAM and several GPUs cannot run here.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from sspir_core.errors import InputError
from tests import fake_comfy


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from sspir_core.demo.presets import tiny_models
    from sspir_core.weights.checkpoint import save_compact

    return save_compact(tiny_models(seed=5), tmp_path_factory.mktemp("patch") / "w.safetensors")


def _glue(monkeypatch, tmp_path, shape):
    fake_comfy.install(monkeypatch, str(tmp_path))
    fake_comfy.install_patcher_host(monkeypatch, shape)
    return importlib.import_module("nodes.native_patch")


def test_on_0_3_75_the_patcher_is_a_plain_model_patcher(monkeypatch, tmp_path, weights):
    glue = _glue(monkeypatch, tmp_path, "0.3.75")
    patch = glue.load_patch(str(weights), torch.float32)
    assert type(patch.patcher) is fake_comfy.FakeModelPatcher
    assert not hasattr(patch.patcher, "cached_patcher_init")
    assert patch.patcher.callbacks == {}
    linear = next(m for m in patch.module.modules() if isinstance(m, torch.nn.Linear))
    assert not hasattr(linear, "weight_comfy_model_dtype")  # no archive on this host
    assert patch.module_for(torch.device("cpu")) is patch.module


def test_on_0_33_the_patcher_is_built_like_the_hosts_model_patch_loaders(monkeypatch, tmp_path, weights):
    glue = _glue(monkeypatch, tmp_path, "0.33.0")
    patch = glue.load_patch(str(weights), torch.float16)
    patcher = patch.patcher
    assert type(patcher) is fake_comfy.FakeDynamicPatcher  # the host's CoreModelPatcher
    linear = next(m for m in patch.module.modules() if isinstance(m, torch.nn.Linear))
    assert linear.weight_comfy_model_dtype == torch.float16
    factory, args = patcher.cached_patcher_init
    again = factory(*args)
    assert type(again) is fake_comfy.FakeDynamicPatcher and again.model is not patch.module
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), patch.module.state_dict().values()))
    plain = factory(*args, disable_dynamic=True)  # what clone(disable_dynamic=True) asks for
    assert type(plain) is fake_comfy.FakeModelPatcher033


def test_a_multigpu_deep_clone_reloads_the_weights_and_each_device_uses_its_own(monkeypatch, tmp_path, weights):
    glue = _glue(monkeypatch, tmp_path, "0.33.0")
    patch = glue.load_patch(str(weights), torch.float32)
    patch.patcher.load_device = torch.device("cuda:0")  # the fake never moves tensors: devices are labels here
    other = patch.patcher.clone().deepclone_multigpu(new_load_device=torch.device("cuda:1"))
    assert other.model is not patch.module
    assert patch.module_for(torch.device("cuda:1")) is other.model
    assert patch.module_for(torch.device("cuda", 0)) is patch.module
    with pytest.raises(InputError, match="Apply SSP-IR: the UNet runs on cuda:2.*MultiGPU"):
        patch.module_for(torch.device("cuda:2"))


def test_a_reload_after_the_file_is_gone_names_the_file(monkeypatch, tmp_path, weights):
    glue = _glue(monkeypatch, tmp_path, "0.33.0")
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(weights.read_bytes())
    patch = glue.load_patch(str(moved), torch.float32)
    moved.unlink()
    with pytest.raises(
        InputError, match="reloads .*moved.safetensors to copy SSP-IR.s weights \\(MultiGPU.*file not found"
    ):
        patch.patcher.deepclone_multigpu(new_load_device=torch.device("cpu"))


class _Sampling(torch.nn.Module):
    """A host ``model_sampling`` stand-in whose constructor takes what the SSP-IR glue does not have."""

    built = 0

    def __init__(self, model_config: dict) -> None:
        super().__init__()
        type(self).built += 1
        self.register_buffer("sigmas", torch.linspace(0.03, 14.6, model_config["steps"]))
        self.sigma_data = 1.0

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):  # noqa: ANN001, ANN201
        return latent_image + sigma * noise


def test_the_paper_start_sampling_is_a_new_instance_sharing_the_models_schedule(monkeypatch, tmp_path):
    """No constructor call (the schedule another node set stays), the same tensors, the MODEL's object untouched."""
    glue = _glue(monkeypatch, tmp_path, "0.3.75")
    base = _Sampling({"steps": 1000})
    base.sigmas = base.sigmas * 2  # as a node that set its own table: a rebuild from the config would lose it
    ours = glue.paper_model_sampling(base)
    assert _Sampling.built == 1 and type(base) is _Sampling
    assert isinstance(ours, _Sampling) and isinstance(ours, glue._PaperStart) and ours is not base
    assert ours.sigmas is base.sigmas and ours.sigma_data == 1.0
    ours.register_buffer("extra", torch.zeros(1))
    assert "extra" not in dict(base.named_buffers())
    latent, noise = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.5)
    assert torch.equal(ours.noise_scaling(torch.tensor(2.0), noise, latent), latent + 1.0)  # not KSAMPLER's start
    assert ours.sspir_paper_start is None


def test_an_inactive_controlnet_gives_the_pixel_attentions_zeros_of_its_residuals_shapes(
    monkeypatch, tmp_path, weights
):
    """Outside its sigma range the ControlNet does not run; the hooks get the (C, H, W) of the residuals it
    would have returned, here taken from a real run on an odd-sized latent (the downsampling rounds up)."""
    glue = _glue(monkeypatch, tmp_path, "0.3.75")
    patch = glue.load_patch(str(weights), torch.float32)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 13, generator=g)  # cond and uncond rows of one image
    t = torch.tensor([500.0, 500.0])
    text = torch.randn(2, 77, 32, generator=g)
    priors = glue.Priors(torch.randn(1, 256, 512, generator=g), torch.randn(1, 24, 9, 13, generator=g), (72, 104))
    downs, _ = patch.module.control(x, t, text, priors.image_emb, priors.features, 1.0)
    seen = {}

    def executor(x, timesteps, context, y, control, options, **kwargs):  # noqa: ANN001, ANN202
        seen.update(options[glue.STATE_KEY]["me"])
        return x

    run = glue.NativeRun(patch, priors, 1.0, (1.0, 0.5), "me")  # active for 0.5 <= sigma <= 1 only
    options = {"sigmas": torch.tensor([14.6]), "cond_or_uncond": [0, 1]}
    run(executor, x, t, text, None, None, options)
    assert seen["residuals"] is None
    assert seen["residual_shapes"] == [tuple(d.shape[1:]) for d in downs]
