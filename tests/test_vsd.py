"""The one-step mode's VSD regulariser and fake-score loss, pinned so that a flipped sign or a swapped score fails.

Two kinds of check:
- against an independent reimplementation of OSEDiff's ``OSEDiff_reg`` (``cswry/OSEDiff`` ``osediff.py``) with
  TWO separate UNets, as OSEDiff has them: the real score is a fresh stock UNet with the SD weights, the fake one
  a fresh stock UNet with the LoRA merged into its weights by hand (W + alpha/r * B A). The module under test
  uses one UNet with a peft adapter switched on and off; both must give the same loss and gradient;
- hand cases where the direction is known without any UNet: scores that return constants.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sspir_core.demo.presets import TINY_UNET
from sspir_core.models.build import stock_unet_from_config
from sspir_core.models.one_step import LORA_ALPHA, count_layers
from sspir_core.restore.schedulers import make_scheduler
from sspir_core.training.vsd import VSD_ADAPTER, VSD_TIMESTEPS, VSDScores, fake_score_loss, vsd_loss

pytestmark = pytest.mark.usefixtures("one_thread")
EPS32 = torch.finfo(torch.float32).eps
RANK = 2
CFG = 7.5


def rounding_bound(unet: nn.Module) -> float:
    """Relative float32 rounding between two orders of the same forward (the LoRA merged or beside W): each layer's
    dot products of fan-in k are off by about sqrt(k) * u times |w|.|x| (u = eps/2; Higham's probabilistic bound
    for independent roundings, where k * u is the worst case), summed over the layers (all counted as if in
    depth, an over-count)."""
    layers = [m for m in unet.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    fan_in = max(m.weight[0].numel() for m in layers)
    return count_layers([unet]) * fan_in**0.5 * EPS32 / 2


def alphas() -> torch.Tensor:
    return make_scheduler("ddpm", None).alphas_cumprod


@pytest.fixture(scope="module")
def scores_and_twins():
    """(VSDScores with a non-zero LoRA, an independent real UNet, an independent fake UNet)."""
    torch.manual_seed(0)
    sd = stock_unet_from_config(dict(TINY_UNET)).eval()
    state = {k: v.clone() for k, v in sd.state_dict().items()}
    scores = VSDScores(state, dict(TINY_UNET), RANK, torch.Generator().manual_seed(1)).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in scores.unet.named_parameters():
            if ".lora_B." in name:  # B starts at zero (fake == real): give the fake score its own opinion
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    real = stock_unet_from_config(dict(TINY_UNET)).eval()
    real.load_state_dict(state)
    fake = stock_unet_from_config(dict(TINY_UNET)).eval()
    fake.load_state_dict(merge_lora(scores.unet.state_dict(), VSD_ADAPTER, LORA_ALPHA / RANK))
    return scores, real, fake


def merge_lora(peft_state: dict[str, torch.Tensor], adapter: str, scale: float) -> dict[str, torch.Tensor]:
    """A peft-injected UNet's state as a plain UNet's, each LoRA merged as W + scale * B A (linear and conv)."""
    out = {}
    for key, w in peft_state.items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer", "")
        prefix = key.rsplit(".base_layer.", 1)[0] if ".base_layer." in key else None
        a_key, b_key = f"{prefix}.lora_A.{adapter}.weight", f"{prefix}.lora_B.{adapter}.weight"
        if prefix is not None and key.endswith(".weight") and a_key in peft_state:
            a, b = peft_state[a_key], peft_state[b_key]
            delta = b.flatten(1) @ a.flatten(1)  # (out, r) @ (r, in * k * k)
            w = w + scale * delta.view(w.shape)
        out[plain] = w.clone()
    return out


def reference_vsd(real, fake, abar, x0, text, negative, cfg, g) -> torch.Tensor:
    """OSEDiff_reg.distribution_matching_loss, written out with two UNets (the draws in the same order)."""
    b = x0.shape[0]
    t = torch.randint(*VSD_TIMESTEPS, (b,), generator=g).long()
    noise = torch.randn(x0.shape, generator=g)
    a = abar[t].view(-1, 1, 1, 1).float()
    with torch.no_grad():
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        eps_fake = fake(noisy, t, encoder_hidden_states=text).sample
        x0_fake = (noisy - (1 - a).sqrt() * eps_fake) / a.sqrt()
        eps_u = real(noisy, t, encoder_hidden_states=negative).sample
        eps_c = real(noisy, t, encoder_hidden_states=text).sample
        x0_real = (noisy - (1 - a).sqrt() * (eps_u + cfg * (eps_c - eps_u))) / a.sqrt()
        weighting = (x0 - x0_real).abs().mean(dim=[1, 2, 3], keepdim=True)
        grad = (x0_fake - x0_real) / weighting
    return F.mse_loss(x0, (x0 - grad).detach())


def inputs(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    # large text embeddings, so that the text moves the tiny UNet's output well above rounding (CFG has teeth)
    text = 4 * torch.randn(2, 5, TINY_UNET["cross_attention_dim"], generator=g)
    negative = 4 * torch.randn(2, 5, TINY_UNET["cross_attention_dim"], generator=g)
    return x0, text, negative


def test_vsd_equals_a_two_unet_reimplementation(scores_and_twins):
    scores, real, fake = scores_and_twins
    x0, text, negative = inputs()
    mine_x0 = x0.clone().requires_grad_(True)
    ref_x0 = x0.clone().requires_grad_(True)
    mine = vsd_loss(scores, alphas(), mine_x0, text, negative, CFG, torch.Generator().manual_seed(4))
    ref = reference_vsd(real, fake, alphas(), ref_x0, text, negative, CFG, torch.Generator().manual_seed(4))
    mine.backward()
    ref.backward()
    # the merged LoRA and the adapter differ by the order of float32 sums (rounding_bound of each eps); CFG is
    # (1 - cfg) eps_u + cfg eps_c, so up to (2 cfg - 1) times that, and the gradient is a difference of two x0
    # estimates of the size of each (the LoRA moves eps by O(1))
    tol = (2 * CFG - 1) * rounding_bound(real)
    assert float(ref.detach()) > 0
    assert mine.item() == pytest.approx(ref.item(), rel=2 * tol)
    scale = float(ref_x0.grad.abs().max())
    assert float((mine_x0.grad - ref_x0.grad).abs().max()) <= tol * scale
    # controls: the CFG pair swapped, or the fake and real scores swapped, is far outside that bound
    for wrong in (dict(text=negative, negative=text), dict(real=fake, fake=real)):
        args = dict(real=real, fake=fake, text=text, negative=negative) | wrong
        x = x0.clone().requires_grad_(True)
        reference_vsd(
            args["real"],
            args["fake"],
            alphas(),
            x,
            args["text"],
            args["negative"],
            CFG,
            torch.Generator().manual_seed(4),
        ).backward()
        assert float((x.grad - ref_x0.grad).abs().max()) > 10 * tol * scale
    # the gradient is (2/N) * (x0_fake - x0_real) / weighting: never zero with a non-zero LoRA
    assert float(ref_x0.grad.abs().max()) > 0


def test_the_adapter_off_is_the_real_sd_unet(scores_and_twins):
    scores, real, fake = scores_and_twins
    x0, text, _ = inputs(5)
    t = torch.tensor([500, 100])
    with torch.no_grad():
        off = scores.eps(x0, t, text, fake=False)
        on = scores.eps(x0, t, text, fake=True)
        assert torch.allclose(off, real(x0, t, encoder_hidden_states=text).sample, rtol=0, atol=1e-5)
        merged = fake(x0, t, encoder_hidden_states=text).sample
        assert float((on - merged).abs().max()) <= rounding_bound(real) * float(merged.abs().max())
        assert float((on - off).abs().max()) > 1e-3  # the LoRA changes the fake score (the check has teeth)


class ConstantScores:
    """Scores without a UNet: eps = ``fake_eps`` with the adapter on, ``cond``/``uncond`` off (by the text given)."""

    def __init__(self, fake_eps: float, cond: float, uncond: float, text: torch.Tensor):
        self.fake_eps, self.cond, self.uncond, self.text = fake_eps, cond, uncond, text

    def eps(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor, fake: bool) -> torch.Tensor:
        if fake:
            return torch.full_like(noisy, self.fake_eps)
        is_cond = (text == self.text[:1]).flatten(1).all(dim=1).view(-1, 1, 1, 1)
        return torch.where(is_cond, torch.full_like(noisy, self.cond), torch.full_like(noisy, self.uncond))


def test_vsd_gradient_points_from_the_fake_towards_the_real_score():
    """Hand case: the real score predicts noise eps_r = u + cfg (c - u) everywhere, the fake one 0. Then
    x0_fake - x0_real = sqrt(1 - abar) / sqrt(abar) * eps_r, so d loss / d x0 = (2/N) * that / weighting: the same
    sign as eps_r everywhere. A gradient-descent step moves x0 towards the real score's x0 estimate."""
    x0, text, negative = inputs(6)
    text[1] = text[0]  # both rows carry the same caption, so the stand-in tells cond from uncond by the text
    for c, u in ((0.3, 0.1), (-0.2, 0.1)):
        scores = ConstantScores(0.0, c, u, text)
        x = x0.clone().requires_grad_(True)
        loss = vsd_loss(scores, alphas(), x, text, negative, CFG, torch.Generator().manual_seed(7))
        loss.backward()
        eps_r = u + CFG * (c - u)
        g = torch.Generator().manual_seed(7)
        t = torch.randint(*VSD_TIMESTEPS, (2,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas()[t].view(-1, 1, 1, 1).float()
        diff = (1 - a).sqrt() / a.sqrt() * eps_r  # x0_fake - x0_real
        # x0 - x0_real = x0 - (sqrt(a) x0 + sqrt(1-a) noise - sqrt(1-a) eps_r) / sqrt(a)
        weighting = ((1 - a).sqrt() / a.sqrt() * (eps_r - noise)).abs().mean(dim=(1, 2, 3), keepdim=True)
        expected = 2 / x0.numel() * diff / weighting
        assert torch.sign(x.grad).eq(1.0 if eps_r > 0 else -1.0).all()
        # rounding: a few float32 operations on values of order 1/sqrt(abar) ~ 15
        assert torch.allclose(x.grad, expected.expand_as(x0), rtol=1e-4, atol=0)


def test_fake_score_loss_is_the_diffusion_loss_of_the_fake_unet(scores_and_twins):
    """OSEDiff_reg.diff_loss with the fake UNet alone: t ~ U[0, 1000), noised detached latents, MSE to the noise."""
    scores, _, fake = scores_and_twins
    x0, text, _ = inputs(8)
    x = x0.clone().requires_grad_(True)
    mine = fake_score_loss(scores, alphas(), x, text, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = alphas()[t].view(-1, 1, 1, 1).float()
    with torch.no_grad():
        ref = F.mse_loss(fake(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=text).sample, noise)
    assert mine.item() == pytest.approx(ref.item(), rel=2 * rounding_bound(fake))
    mine.backward()
    assert x.grad is None or float(x.grad.abs().max()) == 0  # the generator gets nothing from the fake score
    lora_grads = [p.grad for n, p in scores.unet.named_parameters() if ".lora_" in n and p.grad is not None]
    assert lora_grads and all(torch.isfinite(gr).all() for gr in lora_grads)
    scores.unet.zero_grad(set_to_none=True)


def test_fake_score_loss_target_is_the_noise_by_hand():
    """Hand case: a fake score that predicts 0 has loss mean(noise^2) for that draw; one that predicts the noise
    itself would have 0. So the target is the noise, not x0 and not minus the noise."""
    x0, text, _ = inputs(10)
    loss = fake_score_loss(ConstantScores(0.0, 0, 0, text), alphas(), x0, text, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert loss.item() == pytest.approx(float((noise**2).mean()), rel=1e-6)


# ---------------------------------------------------------------- the recipe's defaults reach the loss


def test_one_step_defaults_keep_the_caption_and_use_a_negative_prompt():
    """OSEDiff never drops the prompt and guides VSD away from a negative one; the 50-step recipe drops 50%."""
    from sspir_core.cli import build_parser
    from sspir_core.cli.train import config_from_args

    def cfg(*extra: str):
        args = build_parser().parse_args(["train", "--output", "o", "--data", "d", "--preset", "tiny-random", *extra])
        return config_from_args(args)

    one = cfg("--mode", "one-step")
    assert one.caption_dropout == 0.0
    assert one.vsd_negative_prompt and "over-smooth" in one.vsd_negative_prompt
    assert cfg().caption_dropout == 0.5
    assert cfg("--mode", "one-step", "--caption-dropout", "0.3").caption_dropout == 0.3
    assert cfg("--mode", "one-step", "--vsd-negative-prompt", "").vsd_negative_prompt == ""


def test_the_vsd_negative_prompt_is_what_the_one_step_loss_encodes(monkeypatch):
    from types import SimpleNamespace

    from sspir_core.training import one_step

    seen = []

    def fake_pair(text_encoder, tokenizer, positive, negative, max_chunks, device):
        seen.append(negative)
        raise StopIteration  # enough: the prompts are what is under test

    monkeypatch.setattr(one_step, "encode_prompt_pair", fake_pair)
    training = one_step.OneStepTraining.__new__(one_step.OneStepTraining)
    vae = SimpleNamespace(
        encode=lambda x: SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda generator: torch.zeros(1, 4, 1, 1))),
        config=SimpleNamespace(scaling_factor=1.0),
    )
    training.pipe = SimpleNamespace(vae=vae, text_encoder=None, tokenizer=None)
    training.frozen_dtype, training.max_chunks, training.negative_prompt = torch.float32, 1, "blurry, noisy"
    with pytest.raises(StopIteration):
        training.encode(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), ["a photo"], torch.Generator())
    assert seen == ["blurry, noisy"]
