"""The work of a restore counted before it starts, and Cancel acting at every tile and inside every model block."""

from __future__ import annotations

import logging

import pytest
import torch

from sspir_core.demo.presets import tiny_random_pipeline
from sspir_core.restore.pipeline import RestoreOptions
from sspir_core.restore.work import Run, Speed, plan_restore

# A 64x128 px LQ (latent 8x16) with latent tiles of 8 (overlap 4), VAE tiles of 64 px and Processor tiles of
# 8 x 8 = 64 px. By hand, with tiling.tile_grid's rule n = ceil((size - tile) / (tile - overlap)) + 1:
#   latent 16 wide: ceil(8 / 4) + 1 = 3 tiles, 8 high: 1        -> 3 per step, 2 steps -> 6
#   VAE encode: latent tile 64 / 8 = 8, overlap min(64 // 4, 128) // 8 = 2: ceil(8 / 6) + 1 = 3
#   VAE decode: latent tile max(8, 64 // 8) = 8, overlap min(16, 8 // 4) = 2: 3
#   Processor: non-overlapping 64 px squares of 64x128: 2;  CLIP: 1 forward
HAND = {"clip": 1, "processor": 2, "vae encode": 3, "denoise": 6, "vae decode": 3}
OPTIONS = dict(steps=2, tile=8, tile_overlap=4, vae_tile=64)


@pytest.fixture(scope="module")
def pipe():
    return tiny_random_pipeline(seed=0)


@pytest.fixture(scope="module")
def lq():
    return torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))


class Counting(Run):
    """A run that counts its units per stage and may raise (as ComfyUI's interrupt does) at a chosen moment."""

    def __init__(self, stop=None):
        super().__init__(check=self._check)
        self.stage_units: dict[str, int] = {}
        self.stop = stop  # (stage, n): raise when the n+1-th unit of that stage is about to start
        self.interrupts = 0

    def _check(self):
        self.interrupts += 1

    def unit(self, stage):
        if self.stop == (stage, self.stage_units.get(stage, 0)):
            raise KeyboardInterrupt(f"cancelled before {stage} unit {self.stop[1] + 1}")
        self.stage_units[stage] = self.stage_units.get(stage, 0) + 1
        super().unit(stage)


def test_the_plan_counts_what_the_loops_do_and_both_match_a_hand_count(pipe, lq, caplog):
    run = Counting()
    with caplog.at_level(logging.INFO, logger="sspir"):
        pipe.restore(lq, "a cat", RestoreOptions(**OPTIONS), run=run)
    (plan,) = run.plans
    assert plan.units == HAND
    assert run.stage_units == HAND and run.done == run.total == sum(HAND.values())
    announced = [r.getMessage() for r in caplog.records if "latent tiles" in r.getMessage()]
    assert announced and "to 128x64 px" in announced[0] and "latent tiles 1x3 of 8" in announced[0]
    assert run.interrupts > run.done  # the models' blocks are cancel points too, not only the tiles
    assert any("step 1/2" in r.getMessage() and "of denoising left" in r.getMessage() for r in caplog.records)


def test_the_plan_of_a_3000x2000_output_as_the_issue_ran_it():
    """Defaults (tile 96/32, VAE 1024 px) at 3000x2000 px: latent 375x250 -> 6 x 4 = 24 tiles per step; the
    Processor's 768 px squares 4 x 3 = 12; VAE decode latent tile 128 (overlap 16): 4 x 3 = 12, encode the
    same grid in latent px (tile 128, overlap 16). Counted by hand with n = ceil((size - tile)/(tile - overlap)) + 1."""
    plan = plan_restore((2000, 3000), 1, 50, True, 96, 32, 1024)
    assert plan.per_step == 24 and plan.units["denoise"] == 50 * 24
    assert plan.units["processor"] == 12 and plan.units["vae decode"] == 12 and plan.units["vae encode"] == 12
    text = plan.describe()
    assert "3000x2000 px (6.0 MP)" in text and "latent tiles 4x6 of 96" in text and "50 steps x 24" in text
    assert "time estimate after the first step" in plan.describe()
    assert "12 Processor tile(s), 12 VAE encode tile(s)" in text
    assert plan.unit_area == 96 * 96  # the grid's tiles all have the tile's size (the last one shifted in)
    assert "about 2.0 h of denoising" in plan.describe(Speed(6.0 / 96**2, 96 * 96))  # 1200 units x 6 s


def test_a_time_estimate_scales_with_the_area_or_is_not_given():
    """Issue 27: a 3000x2000 run was told "about 4 s of denoising" from a 48 px run's speed. The estimate now
    scales by latent area (units x area) and is left out when the units are more than 2x another size."""
    small = plan_restore((48, 48), 1, 50, True, 96, 32, 1024)  # one 6x6 latent unit per step
    speed = Speed(0.1 / 36, 36)  # 0.1 s per step of a 6x6 latent
    assert small.unit_area == 36 and "about 5 s of denoising" in small.describe(speed)
    bigger = plan_restore((64, 64), 1, 50, True, 96, 32, 1024)  # 8x8 latent: 64/36 of the area
    assert "about 9 s of denoising" in bigger.describe(speed)  # 50 x 0.1 x 64/36 = 8.9 s
    large = plan_restore((2000, 3000), 1, 50, True, 96, 32, 1024)
    assert "of denoising" not in large.describe(speed) and "time estimate after the first step" in large.describe(speed)


@pytest.mark.parametrize("stage, at", [("processor", 1), ("vae encode", 2), ("denoise", 4), ("vae decode", 1)])
def test_cancel_at_a_tile_starts_no_further_tile(pipe, lq, stage, at):
    """Cancel raised before tile ``at + 1`` of a stage: no later unit of any stage runs."""
    run = Counting(stop=(stage, at))
    with pytest.raises(KeyboardInterrupt, match=f"before {stage} unit {at + 1}"):
        pipe.restore(lq, "a cat", RestoreOptions(**OPTIONS), run=run)
    assert run.stage_units[stage] == at
    later = list(HAND)[list(HAND).index(stage) + 1 :]
    assert all(run.stage_units.get(s, 0) == 0 for s in later), run.stage_units


class _Cancelled(Exception):
    pass


@pytest.mark.parametrize("module", ["unet", "vae_decoder", "clip"])
def test_cancel_acts_inside_a_models_forward(pipe, lq, module):
    """Pressed while a model runs, Cancel stops it before its forward returns: every block is a cancel point
    (a latent tile of SD1.5 takes tens of seconds on a CPU; one block is a fraction of that)."""
    target = {"unet": pipe.models.unet, "vae_decoder": pipe.vae.decoder, "clip": pipe.clip_vision}[module]
    state = {"inside": False, "finished": 0}
    pre = target.register_forward_pre_hook(lambda *_: state.update(inside=True))
    post = target.register_forward_hook(lambda *_: state.update(inside=False, finished=state["finished"] + 1))

    def check():
        if state["inside"]:
            raise _Cancelled

    try:
        with pytest.raises(_Cancelled):
            pipe.restore(lq, "a cat", RestoreOptions(**OPTIONS), run=Run(check=check))
    finally:
        pre.remove()
        post.remove()
    assert state["finished"] == 0  # the forward it was in did not complete
    assert all(not m._forward_pre_hooks for m in target.modules())  # the cancel points were removed


def test_a_run_without_a_check_adds_no_hooks_and_changes_nothing(pipe, lq):
    plain = pipe.restore(lq, "a cat", RestoreOptions(**OPTIONS))
    tracked = pipe.restore(lq, "a cat", RestoreOptions(**OPTIONS), run=Counting())
    assert torch.equal(plain, tracked)
