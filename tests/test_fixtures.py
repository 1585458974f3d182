"""The parity fixture and manifests ship with the repository, so a lone clone runs the whole suite."""

from __future__ import annotations

from tests.conftest import FIXTURES, REPO


def test_default_fixture_location_is_inside_the_repository(monkeypatch):
    import importlib

    import tests.conftest as conftest

    monkeypatch.delenv("SSPIR_FIXTURES", raising=False)
    default = importlib.reload(conftest).FIXTURES
    try:
        assert default.resolve().is_relative_to(REPO), default
    finally:
        importlib.reload(conftest)


def test_every_fixture_file_is_present_with_its_provenance():
    tiny, manifests = FIXTURES / "official-tiny-a", FIXTURES / "manifests"
    for rel in (
        "checkpoint-7/unet/config.json",
        "checkpoint-7/unet/diffusion_pytorch_model.safetensors",
        "checkpoint-7/controlnet/config.json",
        "checkpoint-7/controlnet/diffusion_pytorch_model.safetensors",
        "checkpoint-7/refine/refine.pt",
        "inputs.safetensors",
        "outputs.safetensors",
    ):
        assert (tiny / rel).is_file(), rel
    for base in ("sd15", "sd21"):
        for what in ("keys", "unet-config", "controlnet-config"):
            assert (manifests / f"sspir-{base}-{what}.json").is_file()
    assert "zyhrainbow/SSP-IR commit 64e6e5c" in (tiny / "README.md").read_text()
    assert "official classes" in (manifests / "README.md").read_text()
