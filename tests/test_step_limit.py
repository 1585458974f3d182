"""The most steps a run may take is the most every scheduler can actually run (official spacing)."""

from __future__ import annotations

import pytest
import torch

from sspir_core.errors import InputError
from sspir_core.restore.pipeline import MAX_STEPS, RestoreOptions
from sspir_core.restore.schedulers import SCHEDULERS, make_scheduler


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_max_steps_runs_with_every_scheduler(name):
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(MAX_STEPS)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 2, generator=gen)
    for t in scheduler.timesteps[:3]:  # the first steps use the largest timesteps
        x = scheduler.step(torch.randn(x.shape, generator=gen), t, x).prev_sample
    assert torch.isfinite(x).all()
    assert int(scheduler.timesteps.max()) < scheduler.config.num_train_timesteps


def test_one_step_more_is_refused_and_would_fail():
    with pytest.raises(InputError, match="steps"):
        RestoreOptions(steps=MAX_STEPS + 1).validate()
    scheduler = make_scheduler("dpmpp")  # one more step asks for timestep 1000, which does not exist
    scheduler.set_timesteps(MAX_STEPS + 1)
    assert int(scheduler.timesteps.max()) == scheduler.config.num_train_timesteps
