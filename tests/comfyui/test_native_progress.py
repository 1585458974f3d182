"""The native route's long work announced in ComfyUI's log before it runs (issue 27: SSP-IR LQ Latent encoded a
3000x2000 image for 900 s without a line), on the real server with the native demo models."""

from __future__ import annotations

import pytest

from tests.comfyui.test_native import _lq, _native, native_files, native_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.comfyui


def test_lq_latent_and_apply_announce_size_and_tiles(native_server):  # noqa: F811
    """A 24x32 LQ at x4 is 96x128 px. LQ Latent with vae_tile 64 encodes latent 12x16 in tiles of 8 overlapping
    by 2 (64 px, overlap min(128, 64 // 4) = 16 px): by hand, n = ceil((size - tile) / (tile - overlap)) + 1 per
    side, 2 x 3 = 6 tiles. Apply SSP-IR's Processor fits in one 1024 px tile."""
    image = _lq(native_server, 27, (24, 32))
    prompt = _native(image, steps=2)
    prompt["lat"]["inputs"]["vae_tile"] = 64
    prompt["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["fix", 0]}}
    native_server.run(prompt, timeout=900)
    log = native_server.log_path.read_text(errors="replace")
    assert "SSP-IR LQ Latent: 1 image(s) at 128x96 px (0.0 MP), VAE tiles of 64 px; 6 VAE encode tile(s)" in log, (
        native_server.log_tail()
    )
    assert "Apply SSP-IR: processor prior of 1 image(s) at 128x96 px; 1 Processor tile(s)" in log, (
        native_server.log_tail()
    )


@pytest.mark.parametrize(
    "changes, widget", [({"start_percent": 0.6, "end_percent": 0.2}, "end_percent"), ({"tile": 12}, "tile")]
)
def test_apply_reports_a_bad_widget_once_on_it(native_server, changes, widget):  # noqa: F811
    """Apply SSP-IR checks tile, tile_overlap, start_percent and end_percent when queued; the error names only the
    widget it is about (issue 27: it was repeated on every input the check takes)."""
    import json

    from tests.comfyui.comfy_helpers import harness

    prompt = _native(_lq(native_server, 28, (16, 16)), steps=2)
    prompt["apply"]["inputs"].update(changes)
    prompt["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["fix", 0]}}
    with pytest.raises(harness.ComfyUIError) as err:
        native_server.post("/prompt", {"prompt": prompt, "client_id": native_server.client_id})
    errors = json.loads(str(err.value).split(": ", 2)[-1])["node_errors"]
    assert list(errors) == ["apply"], errors
    (error,) = errors["apply"]["errors"]
    assert error["extra_info"]["input_name"] == widget and error["details"].startswith(widget), error
