"""SSP-IR's residuals joined to another ControlNet's ``control`` dict (sspir_core.native.control), no ComfyUI.

The contract comes from ComfyUI 0.3.75's source (read, not imported): its UNet pops each list from the end,
``"output"`` meeting the skips deepest first, so ``"output"[i]`` belongs to input block ``i``; its ControlNet
appends one ``"output"`` residual per input block. Residual ``i`` below is ``[i]`` (ours ``[10 i]``) so every
expected sum, written out by hand, names the skip it belongs to.
"""

from __future__ import annotations

import pytest
import torch

from sspir_core.errors import InputError
from sspir_core.native.control import merge_control


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def _values(entries: list) -> list:
    return [None if e is None else e.tolist() for e in entries]


OURS = [_t(0.0), _t(10.0), _t(20.0), _t(30.0)]  # skip residuals, conv_in first (diffusers' order)
MID = _t(100.0)


def test_alone_our_residuals_are_the_output_and_middle_lists():
    for control in (None, {}, {"output": [], "middle": []}):
        out = merge_control(control, OURS, MID)
        assert _values(out["output"]) == [[0.0], [10.0], [20.0], [30.0]]
        assert _values(out["middle"]) == [[100.0]]


def test_summed_index_by_index_with_none_entries_and_other_keys_kept():
    theirs = {"input": [None, _t(7.0)], "output": [_t(1.0), None, _t(2.0), _t(3.0)], "middle": [_t(5.0)]}
    out = merge_control(theirs, OURS, MID)
    assert _values(out["output"]) == [[1.0], [10.0], [22.0], [33.0]]  # 1+0, None+10, 2+20, 3+30
    assert _values(out["middle"]) == [[105.0]]
    assert _values(out["input"]) == [None, [7.0]]  # "input" is another ControlNet's only
    # ComfyUI's first output block pops the deepest skip and the last "output" entry together
    assert out["output"].pop().tolist() == [33.0] and out["middle"].pop().tolist() == [105.0]
    # the caller's lists and tensors are untouched (the UNet pops ours, ComfyUI may reuse theirs)
    assert _values(theirs["output"]) == [[1.0], None, [2.0], [3.0]] and theirs["middle"][0].tolist() == [5.0]
    assert [o.tolist() for o in OURS] == [[0.0], [10.0], [20.0], [30.0]]


def test_middle_sum_goes_to_the_entry_the_unet_pops():
    out = merge_control({"middle": [_t(1.0), _t(2.0)]}, OURS, MID)
    assert _values(out["middle"]) == [[1.0], [102.0]]
    out = merge_control({"middle": [None]}, OURS, MID)
    assert _values(out["middle"]) == [[100.0]]


def test_broadcast_shapes_and_dtypes_sum_as_tensors():
    """A [N, C, H, W] residual of another ControlNet in fp16 plus ours in fp32: the fp32 sum, element by element."""
    theirs = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float16)
    ours = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    out = merge_control({"output": [theirs]}, [ours], MID)
    assert out["output"][0].dtype == torch.float32
    assert torch.equal(out["output"][0], ours + 0.5)  # 0.5 and these integers are exact in both dtypes


@pytest.mark.parametrize("n", [3, 5])
def test_a_different_number_of_skip_residuals_is_an_input_error(n):
    with pytest.raises(InputError, match=f"gives {n} skip residuals, SSP-IR 4"):
        merge_control({"output": [_t(1.0)] * n}, OURS, MID)
