"""The control-contract self-check (nodes/native_contract.py) on a small stand-in of ComfyUI's LDM UNet.

The stand-in reads ``control`` the way ComfyUI 0.3.75 and 0.33.0 do (``openaimodel.py``: ``apply_control`` pops
each list from its end, output blocks pop the skips deepest first), with layers run one by one as
``forward_timestep_embed`` does; the variants break one part of that contract each and the check must refuse
them. The same check on the real host's UNet runs in tests/comfyui/test_native_contract.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nodes import native_contract as nc
from sspir_core.errors import InputError


def pop_last(values: list) -> object:
    return values.pop()


def pop_first(values: list) -> object:
    return values.pop(0)


class FakeUNet(nn.Module):
    """Four input blocks (one downsampling), a middle block, four output blocks (one upsampling)."""

    def __init__(self, pop=pop_last, skip_pop=pop_last, middle: bool = True, embed_patch: bool = True) -> None:
        super().__init__()
        conv = nn.Conv2d
        self.input_blocks = nn.ModuleList(
            [
                nn.Sequential(conv(4, 8, 3, padding=1)),
                nn.Sequential(conv(8, 8, 3, padding=1)),
                nn.Sequential(conv(8, 8, 3, stride=2, padding=1)),
                nn.Sequential(conv(8, 16, 3, padding=1)),
            ]
        )
        self.middle_block = nn.Sequential(conv(16, 16, 3, padding=1), conv(16, 16, 3, padding=1))
        self.output_blocks = nn.ModuleList(
            [
                nn.Sequential(conv(32, 16, 3, padding=1)),
                nn.Sequential(conv(24, 8, 3, padding=1), nn.Upsample(scale_factor=2)),
                nn.Sequential(conv(16, 8, 3, padding=1)),
                nn.Sequential(conv(16, 8, 3, padding=1)),
            ]
        )
        self.out = conv(8, 4, 3, padding=1)
        self.pop, self.skip_pop, self.middle, self.embed_patch = pop, skip_pop, middle, embed_patch

    def apply_control(self, h, control, name):
        if control is not None and control.get(name):
            ctrl = self.pop(control[name])
            if ctrl is not None and ctrl.shape == h.shape:  # ComfyUI only warns on a shape mismatch
                h += ctrl
        return h

    def forward(self, x, timesteps=None, context=None, control=None, transformer_options=None):
        patches = (transformer_options or {}).get("patches", {}).get("forward_timestep_embed_patch", [])

        def run(block, h):  # forward_timestep_embed: a registered handler takes the layers of its class
            for layer in block:
                handler = next((f for cls, f in patches if isinstance(layer, cls)), None) if self.embed_patch else None
                h = layer(h) if handler is None else handler(layer, h, None, context, transformer_options)
            return h

        hs, h = [], x
        for block in self.input_blocks:
            h = self.apply_control(run(block, h), control, "input")
            hs.append(h)
        h = run(self.middle_block, h)
        if self.middle:
            h = self.apply_control(h, control, "middle")
        for block in self.output_blocks:
            hsp = self.apply_control(self.skip_pop(hs), control, "output")
            h = run(block, torch.cat([h, hsp], dim=1))
        return self.out(h)


def _embed_ok() -> int:
    return nc.probe_embed_patch(FakeUNet())


def _reset() -> None:
    """Leave a good verdict behind (it is per process)."""
    nc.check_control_contract(lambda: nc.probe_landing(FakeUNet()), _embed_ok, fresh=True)


def test_the_contract_as_written_in_control_py_and_layout_py():
    # By hand for 4 blocks: input block i gets "input"[3 - i]; the last "middle" entry; output block k takes the
    # skip of input block 3 - k, and "output"[j] meets the skip of input block j.
    want = nc.ControlLanding(input=(3, 2, 1, 0), middle=1, skips=(3, 2, 1, 0), output=(3, 2, 1, 0))
    assert nc.assumed_landing(4) == want
    assert nc.probe_landing(FakeUNet()) == want


def test_the_check_passes_on_the_host_order_and_keeps_its_verdict():
    calls = []

    def probe():
        calls.append(1)
        return nc.probe_landing(FakeUNet())

    nc.check_control_contract(probe, lambda: nc.probe_embed_patch(FakeUNet()), fresh=True)
    nc.check_control_contract(probe)  # cached: the probe is not run again
    assert len(calls) == 1


def test_a_host_that_no_longer_hands_marker_layers_to_the_handler_is_refused():
    assert nc.probe_embed_patch(FakeUNet()) == 1
    with pytest.raises(InputError, match="the probe itself failed.*marker layer ran itself"):
        nc.check_control_contract(
            lambda: nc.probe_landing(FakeUNet()), lambda: nc.probe_embed_patch(FakeUNet(embed_patch=False)), fresh=True
        )
    _reset()


@pytest.mark.parametrize(
    "unet, field",
    [
        (FakeUNet(pop=pop_first), "input"),  # apply_control popping from the front
        (FakeUNet(middle=False), "middle"),  # the middle residual no longer added
    ],
)
def test_a_changed_contract_fails_loudly(unet, field):
    got = nc.probe_landing(unet)
    problems = nc.landing_problems(got, nc.assumed_landing(4))
    assert any(p.startswith(field + ":") for p in problems), problems
    with pytest.raises(InputError, match="apply_control") as err:
        nc.check_control_contract(lambda: got, _embed_ok, fresh=True)
    assert field + ": got" in str(err.value)
    with pytest.raises(InputError):  # the verdict is kept for the process
        nc.check_control_contract(lambda: nc.probe_landing(FakeUNet()), _embed_ok)
    _reset()


def test_a_pop_order_change_moves_every_output_residual():
    got = nc.probe_landing(FakeUNet(pop=pop_first))
    assert got.output != (3, 2, 1, 0) and got.skips == (3, 2, 1, 0)


def test_skips_taken_in_another_order_are_a_changed_contract():
    # popping the skips from the front breaks the UNet's own shapes here: the probe's failure is the verdict
    with pytest.raises(InputError, match="the probe itself failed"):
        nc.check_control_contract(lambda: nc.probe_landing(FakeUNet(skip_pop=pop_first)), _embed_ok, fresh=True)
    _reset()
