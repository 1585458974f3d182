"""Node ``execute`` without a server: the pack's nodes on a fake ComfyUI host with the demo models.

The reference for every restored image is the core path the CLI uses (``restore_image`` on a pipeline loaded
straight from the files), so the component graph is checked against an independent assembly of the same models.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import sys
import threading

import pytest
import torch

from sspir_core.demo import model_files as demo_models
from sspir_core.errors import InputError
from tests import fake_comfy

CONTRACT = {  # node id -> (display name, output types), from the nodes/comfy contract (issue 8)
    "SSPIRModelLoader": ("SSP-IR Model Loader", ["SSPIR_MODEL"]),
    "SSPIRClipVisionLoader": ("SSP-IR CLIP Vision Loader", ["SSPIR_CLIP_VISION"]),
    "SSPIRCaptionerLoader": ("SSP-IR Captioner Loader", ["SSPIR_CAPTIONER"]),
    "SSPIRCaption": ("MLLM Caption (SSP-IR)", ["STRING"]),
    "SSPIRClipImageEmbed": ("CLIP Image Embed (SSP-IR)", ["SSPIR_IMAGE_EMBED"]),
    "SSPIRStructureProcessor": ("Structure Processor (SSP-IR)", ["SSPIR_STRUCTURE", "IMAGE"]),
    "SSPIRSampler": ("PGA Sampler (SSP-IR)", ["IMAGE"]),
    "SSPIRRestore": ("SSP-IR Restore (all in one)", ["IMAGE", "STRING"]),
    # the native route (issue 18)
    "SSPIRPatchLoader": ("SSP-IR Patch Loader", ["SSPIR_PATCH"]),
    "SSPIRApply": ("Apply SSP-IR", ["MODEL"]),
    "SSPIRTextEncode": ("SSP-IR Text Encode", ["CONDITIONING", "CONDITIONING"]),
    "SSPIRLQLatent": ("SSP-IR LQ Latent", ["LATENT", "IMAGE"]),
    "SSPIRSchedule": ("SSP-IR Schedule", ["SIGMAS"]),
    "SSPIRColorFix": ("SSP-IR Colour Fix", ["IMAGE"]),
}
STEPS = 2


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    demo_models.write_demo_models(root)
    return root


@pytest.fixture
def host(monkeypatch, models_dir):
    rec = fake_comfy.install(monkeypatch, str(models_dir))
    import nodes

    rec.nodes = {cls.define_schema().node_id: cls for cls in nodes.node_list()}
    return rec


def _load(n):
    model = (
        n["SSPIRModelLoader"]
        .execute(demo_models.SD_NAME, demo_models.SSPIR_NAME, "auto", "auto", "auto", "auto", "in RAM")
        .args[0]
    )
    clip = n["SSPIRClipVisionLoader"].execute(demo_models.CLIP_VISION_NAME).args[0]
    return model, clip


def _widgets(**changes):
    """Sampler widgets as a list-input node receives them (every value in a list)."""
    values = dict(
        negative_prompt="",
        seed=3,
        steps=STEPS,
        cfg=7.5,
        scheduler="ddpm",
        start="lq",
        conditioning_scale=1.0,
        upscale=4.0,
        width=0,
        height=0,
        tile=96,
        tile_overlap=32,
        vae_tile=1024,
        color_fix="adain",
    )
    values.update(changes)
    return {k: [v] for k, v in values.items()}


def _reference(models_dir, rgb, captions, **options):
    """The CLI's path: a pipeline assembled from the files (not the node cache) and restore_image."""
    from sspir_core.restore.components import load_pipeline_parts
    from sspir_core.restore.pipeline import RestoreOptions, RestorePipeline, restore_image
    from sspir_core.weights import load_clip_vision

    parts = load_pipeline_parts(
        models_dir / "checkpoints" / demo_models.SD_NAME, models_dir / "sspir" / demo_models.SSPIR_NAME
    )
    clip = load_clip_vision(models_dir / "clip_vision" / demo_models.CLIP_VISION_NAME)
    pipe = RestorePipeline(parts.models, parts.vae, parts.text_encoder, parts.tokenizer, clip, parts.scheduler_config)
    size = options.pop("target_size", None)
    return restore_image(pipe, rgb, captions, RestoreOptions(steps=STEPS, seed=3, **options), target_size=size)


def _bchw(image):
    return image.permute(0, 3, 1, 2)


def test_nodes_match_the_contract_and_every_input_has_a_tooltip(host):
    assert set(host.nodes) == set(CONTRACT)
    for node_id, cls in host.nodes.items():
        schema = cls.define_schema()
        assert (schema.display_name, [o.io_type for o in schema.outputs]) == CONTRACT[node_id]
        assert schema.category.startswith("SSP-IR") and schema.description
        missing = [i.id for i in schema.inputs if not (i.tooltip or "").strip()]
        assert not missing, f"{node_id}: inputs without a tooltip: {missing}"
    caption_out = host.nodes["SSPIRCaption"].define_schema().outputs[0]
    assert caption_out.is_output_list  # one caption per image
    assert host.nodes["SSPIRSampler"].define_schema().is_input_list


@pytest.mark.parametrize(
    "name, bad",
    [
        ("steps", 0),
        ("cfg", float("nan")),
        ("cfg", 0.5),
        ("conditioning_scale", float("nan")),
        ("conditioning_scale", 2.5),
    ],
)
def test_option_errors_name_the_widgets_own_bounds(host, name, bad):
    """A value the sampler rejects at run time is reported with the bounds its widget shows (one source).

    steps and cfg widgets start at 0, "the checkpoint's own" (resolved before the library sees it): their
    other bounds are the library's, and a value between 0 and the library's low bound is refused when the
    prompt is queued, with the same bounds the library names."""
    from nodes.support import OWN_SETTING
    from sspir_core.errors import OptionError
    from sspir_core.restore.options import LIMITS
    from sspir_core.restore.pipeline import RestoreOptions

    widget = next(i for i in host.nodes["SSPIRSampler"].define_schema().inputs if i.id == name)
    low, high = widget.kw["min"], widget.kw["max"]
    if name in ("steps", "cfg"):
        assert low == OWN_SETTING and high == LIMITS[name][1]
        low = LIMITS[name][0]
        if bad != OWN_SETTING:
            problem = host.nodes["SSPIRSampler"].validate_inputs(**{name: [bad]})
            assert isinstance(problem, str) and f"between {low:g} and {high:g}" in problem, problem
    with pytest.raises(OptionError) as err:
        RestoreOptions(**{name: bad})
    assert f"between {low:g} and {high:g}" in str(err.value), (str(err.value), low, high)


@pytest.mark.parametrize("node_id", ["SSPIRSampler", "SSPIRRestore"])
def test_tiling_widgets_are_checked_when_the_prompt_is_queued(host, node_id):
    """tile 1 (or 12, or not above tile_overlap) is refused by validate_inputs, before anything runs; values
    arrive as lists on these list-input nodes, and as None when they come through a link."""
    node = host.nodes[node_id]
    widgets = {i.id: i.kw for i in node.define_schema().inputs}
    assert widgets["tile"]["step"] == 8 and widgets["vae_tile"]["step"] == 64
    ok = node.validate_inputs(tile=[96], tile_overlap=[32], vae_tile=[1024])
    assert ok is True
    assert node.validate_inputs(tile=[0], tile_overlap=[32], vae_tile=[0]) is True  # 0: never tile
    assert node.validate_inputs(tile=None, tile_overlap=[32], vae_tile=None) is True  # linked
    for kw, words in (
        (dict(tile=[1]), "multiple of 8"),
        (dict(tile=[12]), "try 8"),
        (dict(tile=[32], tile_overlap=[32]), "tile_overlap (32) must be smaller than tile (32)"),
        (dict(tile=[520]), "between 1 and 512"),
        (dict(vae_tile=[100]), "multiple of 64"),
        (dict(tile_overlap=[-8]), "between 0 and 256"),
    ):
        args = {"tile": [96], "tile_overlap": [32], "vae_tile": [1024], **kw}
        problem = node.validate_inputs(**args)
        assert isinstance(problem, str) and words in problem, (kw, problem)


@pytest.mark.parametrize(
    "node_id, kw, widgets",
    [
        ("SSPIRSampler", dict(tile=[7]), ["tile"]),
        ("SSPIRSampler", dict(cfg=[0.5]), ["cfg"]),
        ("SSPIRSampler", dict(tile=[32], tile_overlap=[32]), ["tile_overlap"]),
        ("SSPIRSampler", dict(tile_overlap=[-8]), ["tile_overlap"]),
        ("SSPIRSampler", dict(vae_tile=[100], steps=[2000]), ["vae_tile", "steps"]),
        ("SSPIRRestore", dict(tile=[520], cfg=[0.5]), ["tile", "cfg"]),
        ("SSPIRApply", dict(tile=[12]), ["tile"]),
        ("SSPIRApply", dict(tile=[32], tile_overlap=[40]), ["tile_overlap"]),
        ("SSPIRApply", dict(start_percent=[0.6], end_percent=[0.2]), ["end_percent"]),
        ("SSPIRApply", dict(tile=[12], start_percent=[-0.1]), ["tile", "start_percent"]),
    ],
)
def test_each_widget_problem_is_named_once_by_its_widget(host, node_id, kw, widgets):
    """The nodes sort their problems by widget (issue 27: one bad tile was reported on five widgets): a value
    wrong on its own is its widget's problem, tile_overlap not below tile is the overlap's."""
    node = host.nodes[node_id]
    names = list(inspect.signature(node.widget_problems).parameters)
    fine = {
        "tile": [96],
        "tile_overlap": [32],
        "vae_tile": [1024],
        "steps": [0],
        "cfg": [0.0],
        "start_percent": [0.0],
        "end_percent": [1.0],
    }
    problems = node.widget_problems(**{n: fine[n] for n in names} | kw)
    assert list(problems) == widgets, problems
    for name, problem in problems.items():
        assert problem.startswith(name + " ") or problem.startswith(name + ":"), (name, problem)
    assert node.validate_inputs(**{n: fine[n] for n in names} | kw) == "; ".join(problems.values())


def test_validation_errors_are_moved_onto_their_widgets(host, monkeypatch):
    """attach_errors_to_widgets rewrites what ComfyUI's validate_inputs returns for the pack's nodes: its
    custom-validation errors (one per input the function takes, all with the same text) become one per
    problem, on its widget; other errors and other nodes' results are kept as they are."""
    import asyncio
    import types

    from nodes import host as node_host

    async def host_validate(prompt_id, prompt, item, validated):  # ComfyUI 0.3.75's shape of the result
        inputs = prompt[item]["inputs"]
        errors = [
            {"type": "custom_validation_failed", "details": f"{x} - the whole message", "extra_info": {"input_name": x}}
            for x in ("steps", "cfg", "tile", "tile_overlap", "vae_tile")
            if x in inputs
        ]
        errors.append({"type": "required_input_missing", "details": "image", "extra_info": {"input_name": "image"}})
        validated[item] = (False, errors, item)
        return validated[item]

    fake = types.ModuleType("execution")
    fake.validate_inputs = host_validate
    monkeypatch.setitem(sys.modules, "execution", fake)
    assert node_host.attach_errors_to_widgets(host.nodes.values())
    prompt = {
        "5": {
            "class_type": "SSPIRSampler",
            "inputs": {"steps": 0, "cfg": 0.0, "tile": 7, "tile_overlap": 32, "vae_tile": ["9", 0]},
        },
        "6": {"class_type": "KSampler", "inputs": {"steps": 0, "cfg": 0.0}},
    }
    validated: dict = {}
    ok, errors, _ = asyncio.run(fake.validate_inputs("p", prompt, "5", validated))
    custom = [e for e in errors if e["type"] == "custom_validation_failed"]
    assert [e["extra_info"]["input_name"] for e in custom] == ["tile"], errors
    assert "multiple of 8, got 7: try 8" in custom[0]["details"]
    assert [e["type"] for e in errors].count("required_input_missing") == 1
    assert validated["5"] == (ok, errors, "5")  # what later lookups see
    other = asyncio.run(fake.validate_inputs("p", prompt, "6", {}))[1]
    assert len([e for e in other if e["type"] == "custom_validation_failed"]) == 2  # not ours: untouched


def test_apply_controlnet_range_is_checked_when_the_prompt_is_queued(host):
    """Apply SSP-IR: end_percent below start_percent is refused before anything runs, naming end_percent; naming
    them in validate_inputs makes ComfyUI skip their min/max, so 0..1 (and NaN) are checked here."""
    node = host.nodes["SSPIRApply"]
    assert node.validate_inputs(tile=0, tile_overlap=0, start_percent=0.2, end_percent=0.2) is True
    assert node.validate_inputs(tile=0, tile_overlap=0, start_percent=None, end_percent=0.1) is True  # linked
    for kw, words in (
        (dict(start_percent=0.6, end_percent=0.2), "end_percent (0.2) is below start_percent (0.6)"),
        (dict(start_percent=-0.1), "start_percent must be a number from 0 to 1"),
        (dict(end_percent=1.5), "end_percent must be a number from 0 to 1"),
        (dict(end_percent=float("nan")), "end_percent must be a number from 0 to 1"),
    ):
        problem = node.validate_inputs(**{"tile": 0, "tile_overlap": 0, "start_percent": 0.0, "end_percent": 1.0, **kw})
        assert isinstance(problem, str) and words in problem, (kw, problem)


def test_model_folders_merge_with_extra_model_paths(monkeypatch, models_dir, tmp_path):
    rec = fake_comfy.install(
        monkeypatch, str(models_dir), existing_folders={"LLM": ([str(tmp_path / "extra-llm")], set())}
    )
    import folder_paths

    import nodes

    nodes.node_list()
    assert folder_paths.folder_names_and_paths["LLM"] == (
        [str(models_dir / "LLM"), str(tmp_path / "extra-llm")],
        {"folder"},
    )
    assert folder_paths.folder_names_and_paths["sspir"][0] == [str(models_dir / "sspir")]
    assert rec.unloads == 0


def test_loader_choices_list_official_folders_and_reject_unknown_names(host, fixture_a, tmp_path):
    import folder_paths

    official = tmp_path / "sspir-extra"
    shutil.copytree(fixture_a / "checkpoint-7", official / "run-a" / "checkpoint-7")
    folder_paths.folder_names_and_paths["sspir"][0].append(str(official))
    loader = host.nodes["SSPIRModelLoader"]
    options = {i.id: i.kw.get("options") for i in loader.define_schema().inputs}
    assert options["base_model"] == [demo_models.SD_NAME]
    # no files inside the folder; the demo files sorted as the combo lists them
    assert options["sspir_weights"] == ["run-a/checkpoint-7", demo_models.ONE_STEP_NAME, demo_models.SSPIR_NAME]
    with pytest.raises(InputError, match="'missing.safetensors' is not in the checkpoints folders"):
        loader.execute("missing.safetensors", demo_models.SSPIR_NAME, "auto", "auto", "auto", "auto", "in RAM")
    with pytest.raises(InputError, match="'nope.safetensors' was not found in the sspir folders"):
        loader.execute(demo_models.SD_NAME, "nope.safetensors", "auto", "auto", "auto", "auto", "in RAM")
    with pytest.raises(InputError, match="is not in the clip_vision folders"):
        host.nodes["SSPIRClipVisionLoader"].execute("other.safetensors")
    spec = loader.execute(demo_models.SD_NAME, "run-a/checkpoint-7", "sd15", "auto", "fp16", "on", "off").args[0]
    assert (spec.device, spec.dtype, spec.offload, spec.base) == (
        torch.device("cpu"),
        torch.float16,
        False,
        "sd15",
    )  # --cpu


def test_component_graph_equals_the_cli_path_and_reuses_loaded_models(host, models_dir):
    from sspir_core.restore import components

    n = host.nodes
    model, clip = _load(n)
    torch.manual_seed(0)
    image = torch.rand(2, 10, 12, 3)
    captions = ["a red car", "a green tree"]
    embed = n["SSPIRClipImageEmbed"].execute(model, clip, image, 4.0, 0, 0).args[0]
    structure, preview = n["SSPIRStructureProcessor"].execute(model, image, 4.0, 0, 0).args
    assert preview.shape == (2 * 3, 40, 48, 3)  # 3 scales per image at the output size
    loads = components.MODELS.loads
    out = n["SSPIRSampler"].execute([model], [image], [embed], [structure], [captions], **_widgets()).args[0]
    expected = _reference(models_dir, _bchw(image), captions)
    assert out.shape == (2, 40, 48, 3)
    torch.testing.assert_close(_bchw(out), expected, atol=1e-4, rtol=0)
    # the all-in-one node gives the same, and nothing was loaded again
    seen, checks = len(host.progress), host.interrupt_checks
    restored, used = n["SSPIRRestore"].execute([model], [clip], [image], [captions], **_widgets()).args
    torch.testing.assert_close(restored, out, atol=1e-4, rtol=0)
    assert used == captions and components.MODELS.loads == loads
    # progress in units of work, announced first: CLIP 1, Processor 1 (768 px tiles), VAE encode 1, STEPS
    # steps x 1 latent tile, VAE decode 1 for this 40x48 px output; a live preview after every step
    total = 4 + STEPS
    progress = host.progress[seen:]
    assert progress[0][:2] == (0, total) and progress[-1][:2] == (total, total)
    assert [v for v, t, p in progress if p is None] == list(range(total + 1))
    previews = [p for _, _, p in progress if p is not None]
    assert len(previews) == STEPS
    kind, img, size = previews[-1]
    assert kind == "JPEG" and size == 256 and img.size[0] > 0
    assert host.interrupt_checks - checks > 10 * total  # every tile and every model block checks Cancel


def test_priors_made_at_another_size_are_brought_to_the_samplers_size(host, models_dir):
    n = host.nodes
    model, clip = _load(n)
    torch.manual_seed(1)
    image = torch.rand(1, 9, 11, 3)
    embed = n["SSPIRClipImageEmbed"].execute(model, clip, image, 2.0, 0, 0).args[0]
    structure, _ = n["SSPIRStructureProcessor"].execute(model, image, 2.0, 0, 0).args
    out = (
        n["SSPIRSampler"]
        .execute([model], [image], [embed], [structure], ["a cat"], **_widgets(width=40, height=32, upscale=2.0))
        .args[0]
    )
    assert out.shape == (1, 32, 40, 3)
    assert set(embed.computed) == {(22, 18), (40, 32)} and set(structure.computed) == {(22, 18), (40, 32)}
    expected = _reference(models_dir, _bchw(image), "a cat", target_size=(40, 32))
    torch.testing.assert_close(_bchw(out), expected, atol=1e-4, rtol=0)


def test_each_image_of_a_batch_restores_as_it_would_alone(host):
    """Same seed, whatever the other images' captions (a long one changes the text padding of a naive batch)."""
    n = host.nodes
    model, clip = _load(n)
    torch.manual_seed(2)
    image = torch.rand(2, 8, 8, 3)
    long_caption = "a very detailed photo of " + " and ".join(f"object number {i}" for i in range(40))
    batch = n["SSPIRRestore"].execute([model], [clip], [image], [["a red car", long_caption]], **_widgets()).args[0]
    alone = n["SSPIRRestore"].execute([model], [clip], [image[:1]], ["a red car"], **_widgets()).args[0]
    torch.testing.assert_close(batch[:1], alone, atol=1e-4, rtol=0)


def test_cancel_stops_within_a_step(host):
    n = host.nodes
    model, clip = _load(n)
    n["SSPIRRestore"].execute([model], [clip], [torch.rand(1, 8, 8, 3)], [""], **_widgets(steps=1))
    checks_per_step = host.interrupt_checks  # a 1-step run's checks bound one step's
    seen = len(host.progress)
    host.interrupt_after = host.interrupt_checks + 2 * checks_per_step  # Cancel pressed within step 2 or so
    with pytest.raises(fake_comfy.InterruptProcessingException):
        n["SSPIRRestore"].execute([model], [clip], [torch.rand(1, 8, 8, 3)], [""], **_widgets(steps=10))
    done = [v for v, t, p in host.progress[seen:] if p is None]
    assert 0 < max(done) <= 4 + 3 < host.progress[seen][1]  # stopped within the first steps of 10


def test_captions_rgba_and_cache_off(host, models_dir):
    from sspir_core.restore import components

    n = host.nodes
    model, clip = _load(n)
    captioner = (
        n["SSPIRCaptionerLoader"]
        .execute("llava", demo_models.LLM_NAME, "", "", "", 6, 0, "auto", "auto", False)
        .args[0]
    )
    image = torch.rand(2, 8, 8, 4)  # RGBA batch: alpha is kept
    result = n["SSPIRCaption"].execute(captioner, image)
    captions = result.args[0]
    assert isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert result.ui.as_dict()["text"][0] == "\n\n".join(captions)
    assert components.captioner_for(captioner).model is None  # keep_loaded off: unloaded for the restoration
    out, used = (
        n["SSPIRRestore"].execute([model], [clip], [image], ["photo,"], captioner=[captioner], **_widgets()).args
    )
    assert used == [f"photo, {c}".strip() for c in captions]
    assert out.shape == (2, 32, 32, 4)
    torch.testing.assert_close(
        out[..., 3],
        torch.nn.functional.interpolate(
            image[..., 3:].permute(0, 3, 1, 2), size=(32, 32), mode="bicubic", antialias=True
        ).clamp(0, 1)[:, 0],
    )
    with pytest.raises(InputError, match="got 3 captions for 2 images"):
        n["SSPIRRestore"].execute([model], [clip], [image], [["a", "b", "c"]], **_widgets())
    with pytest.raises(InputError, match="needs a model folder"):
        n["SSPIRCaptionerLoader"].execute("llava", "(none: openai server)", "", "", "", 0, 0, "auto", "auto", False)
    off = (
        n["SSPIRModelLoader"]
        .execute(demo_models.SD_NAME, demo_models.SSPIR_NAME, "auto", "auto", "auto", "auto", "off")
        .args[0]
    )
    n["SSPIRRestore"].execute([off], [clip], [image[:1, ..., :3]], [""], **_widgets(steps=1))
    assert off.key() not in components.MODELS  # dropped after the run


def test_cancel_stops_a_caption_within_a_token(host):
    n = host.nodes
    captioner = (
        n["SSPIRCaptionerLoader"]
        .execute("llava", demo_models.LLM_NAME, "", "", "", 6, 0, "auto", "auto", False)
        .args[0]
    )
    start = host.interrupt_checks
    host.interrupt_after = start + 3  # Cancel pressed while the first caption is being written
    with pytest.raises(fake_comfy.InterruptProcessingException):
        n["SSPIRCaption"].execute(captioner, torch.rand(1, 8, 8, 3) * 0.5 + 0.25)
    assert host.interrupt_checks == start + 3  # one check before the image, then one per token


def test_cancel_stops_an_openai_caption_on_a_server_that_never_answers(host, monkeypatch):
    """ComfyUI's Cancel reaches the OpenAI-compatible captioner while it waits (0.1 s polls): pressed at the third
    interrupt check after the server has the request, the caption ends at that check as an interruption, not
    after the 120 s timeout and two retries; the connection is closed and no retry is sent."""
    from tests.tiny_captioners import SilentServer
    from tests.waiting import HANG_GUARD_S, call_in_thread

    mm = sys.modules["comfy.model_management"]
    real_check = mm.throw_exception_if_processing_interrupted

    with SilentServer() as srv:

        def check():
            if srv.requests and host.interrupt_after is None:
                host.interrupt_after = host.interrupt_checks + 3  # Cancel pressed while the request waits
            real_check()

        monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", check)
        captioner = (
            host.nodes["SSPIRCaptionerLoader"]
            .execute("openai", "(none: openai server)", srv.url, "m", "", 0, 0, "auto", "auto", False)
            .args[0]
        )
        with pytest.raises(fake_comfy.InterruptProcessingException):
            call_in_thread(
                lambda: host.nodes["SSPIRCaption"].execute(captioner, torch.rand(1, 8, 8, 3)),
                "a cancelled caption",
                guard=60,
            )  # under the 120 s timeout it must not wait out
        assert host.interrupt_checks == host.interrupt_after  # no check after the one that raised
        assert srv.hung_up.wait(HANG_GUARD_S), "the connection was left open"
        for thread in threading.enumerate():  # after the request thread, nothing of the caption can send
            if thread.name == "sspir-openai-request":
                thread.join(HANG_GUARD_S)
        assert srv.requests == 1


def test_memory_is_freed_from_comfy_before_a_gpu_run(host):
    from nodes import host as comfy_host

    comfy_host.free_memory_for(torch.device("cpu"))
    assert host.unloads == 0
    comfy_host.free_memory_for(torch.device("cuda"))
    assert (host.unloads, host.soft_empties) == (1, 1)


class _PoolVAE:
    """A stand-in for ComfyUI's VAE: ``encode`` (IMAGE [B,H,W,3] -> [B,4,H/8,W/8]) is an 8x8 average, so a tiled
    encode blended with weights that sum to 1 equals the whole one; ``first_stage_model`` has blocks."""

    def __init__(self) -> None:
        self.first_stage_model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()]))
        self.calls: list[tuple[int, int]] = []

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(pixels.shape[1:3]))
        for block in self.first_stage_model[0]:  # the blocks run, as a real encoder's would
            pixels = block(pixels)
        x = pixels.movedim(-1, 1)
        return torch.nn.functional.avg_pool2d(torch.cat([x, x[:, :1]], 1), 8)


def test_lq_latent_announces_its_work_reports_each_tile_and_cancels_between_them(host, caplog):
    """Issue 27: a 3000x2000 LQ Latent encoded for 900 s without a line. The size and tiles go to the log
    before the work, ComfyUI's bar moves once per tile (announced total first), each tile and each VAE block
    is a cancel point, and the tiled result equals the whole encode (this VAE is linear)."""
    from nodes.native_latent import encode_lq

    padded = torch.rand(1, 3, 256, 512)
    vae = _PoolVAE()
    with caplog.at_level(logging.INFO, logger="sspir"):
        tiled = encode_lq(vae, padded, 128)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SSP-IR LQ Latent")]
    n = len(vae.calls)
    assert n > 2 and "1 image(s) at 512x256 px" in line and f"{n} VAE encode tile(s)" in line, line
    assert [(v, t) for v, t, _ in host.progress] == [(i, n) for i in range(n + 1)]
    assert host.interrupt_checks >= n * 3  # a check before each tile and in each of its two blocks
    whole = encode_lq(_PoolVAE(), padded, 0)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)

    host.interrupt_checks, host.interrupt_after = 0, 5  # Cancel in the first VAE block of the second tile
    stopped = _PoolVAE()
    with pytest.raises(fake_comfy.InterruptProcessingException):
        encode_lq(stopped, padded, 128)
    assert len(stopped.calls) == 2


# ------------------------------------------------------------------------------ data movement on the component route


def test_component_route_is_bit_identical_to_the_one_call_restore(host):
    """Priors made by their nodes (kept where they were made, placed stage by stage) give exactly what the
    all-in-one node computes in one call, bit for bit on the CPU (the CLI path is within 1e-4: see above)."""
    n = host.nodes
    model, clip = _load(n)
    torch.manual_seed(5)
    image = torch.rand(2, 9, 11, 3)
    embed = n["SSPIRClipImageEmbed"].execute(model, clip, image, 4.0, 0, 0).args[0]
    structure, _ = n["SSPIRStructureProcessor"].execute(model, image, 4.0, 0, 0).args
    out = n["SSPIRSampler"].execute([model], [image], [embed], [structure], ["a cat"], **_widgets()).args[0]
    one_call = n["SSPIRRestore"].execute([model], [clip], [image], ["a cat"], **_widgets()).args[0]
    assert torch.equal(out, one_call)


def test_structure_processor_resizes_the_lq_once(host, monkeypatch):
    """The output size and the preview's box are arithmetic: only the prior itself resizes the LQ."""
    from sspir_core import image_io

    calls = []
    real = image_io.resize_image
    monkeypatch.setattr(image_io, "resize_image", lambda x, size: calls.append(tuple(x.shape)) or real(x, size))
    model, _ = _load(host.nodes)
    image = torch.rand(2, 9, 11, 3)
    _, preview = host.nodes["SSPIRStructureProcessor"].execute(model, image, 4.0, 0, 0).args
    assert calls == [(2, 3, 9, 11)]  # the whole batch, once
    assert preview.shape == (2 * 3, 36, 44, 3)  # 9x11 x4, three scales per image


def _placements(monkeypatch, device):
    """Record which modules are asked onto ``device`` (pipeline stages and construction both go through
    move_module)."""
    from sspir_core.models import build
    from sspir_core.restore import pipeline

    placed = []
    real = build.move_module

    def spy(module, target, dtype=None):
        if target is not None and torch.device(target) == device:
            placed.append(module)
        return real(module, target, dtype)

    monkeypatch.setattr(pipeline, "move_module", spy)
    monkeypatch.setattr(build, "move_module", spy)
    return placed


def test_each_node_places_only_the_modules_its_stage_runs(host, monkeypatch):
    """A prior node's pipeline puts on the device only what its stage runs (not all six modules)."""
    from sspir_core.restore import components

    n = host.nodes
    model, clip = _load(n)
    image = torch.rand(1, 8, 8, 3)
    parts = components.MODELS.get(
        model.key(), lambda: components.load_pipeline_parts(model.sd, model.sspir, model.base, model.dtype)
    )
    tower = components.CLIP_VISION.get(clip.key(), lambda: pytest.fail("the CLIP tower is loaded by _load"))

    def names(placed):
        known = {
            id(parts.models.unet): "unet",
            id(parts.models.controlnet): "controlnet",
            id(parts.models.refine): "refine",
            id(parts.vae): "vae",
            id(parts.text_encoder): "text_encoder",
            id(tower): "clip_vision",
        }
        return {known.get(id(m), type(m).__name__) for m in placed}

    placed = _placements(monkeypatch, model.device)
    structure, _ = n["SSPIRStructureProcessor"].execute(model, image, 4.0, 0, 0).args
    assert names(placed) == {"controlnet"}
    placed.clear()
    embed = n["SSPIRClipImageEmbed"].execute(model, clip, image, 4.0, 0, 0).args[0]
    assert names(placed) == {"clip_vision", "refine"}
    placed.clear()
    n["SSPIRSampler"].execute([model], [image], [embed], [structure], ["a cat"], **_widgets(steps=1))
    assert names(placed) == {"text_encoder", "vae", "controlnet", "unet"}  # priors given: no CLIP, no Refine
    assert components.pipeline_for(model, clip).lock is components.RUN_LOCK  # one lock for the shared modules


def test_the_sampler_reads_the_checkpoint_header_once_per_file_identity(host, models_dir, monkeypatch):
    import os

    from sspir_core.restore import components
    from sspir_core.restore.model_cache import ModelCache
    from sspir_core.weights import one_step

    monkeypatch.setattr(components, "MODES", ModelCache(max_items=8))  # earlier tests read this file already
    reads = []
    real = one_step.read_mode
    monkeypatch.setattr(one_step, "read_mode", lambda path: reads.append(path) or real(path))
    model, clip = _load(host.nodes)
    image = torch.rand(1, 8, 8, 3)
    for _ in range(2):
        host.nodes["SSPIRRestore"].execute([model], [clip], [image], [""], **_widgets(steps=1))
    assert len(reads) == 1
    st = os.stat(model.sspir)  # the same file touched: another identity, read again
    os.utime(model.sspir, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    host.nodes["SSPIRRestore"].execute([model], [clip], [image], [""], **_widgets(steps=1))
    assert len(reads) == 2


def test_model_spec_holds_torch_types_parsed_once():
    from sspir_core.restore.components import ModelSpec

    spec = ModelSpec("sd", "sspir", device="cuda:1", dtype="bfloat16")
    assert (spec.device, spec.dtype) == (torch.device("cuda", 1), torch.bfloat16)
    assert ModelSpec("sd", "sspir", device=torch.device("cpu"), dtype=torch.float16) == ModelSpec(
        "sd", "sspir", device="cpu", dtype="torch.float16"
    )
    with pytest.raises(InputError, match="not a torch floating dtype"):
        ModelSpec("sd", "sspir", dtype="int8")
    with pytest.raises(InputError, match="not a torch device"):
        ModelSpec("sd", "sspir", device="gpu")


class _Prior:
    def __init__(self):
        self.moves = []

    def move_to(self, device):
        self.moves.append(device)


@pytest.mark.parametrize(
    "device, offload, cache, home, parked",
    [
        ("cuda", False, "in RAM", "cuda", ["cpu"]),
        ("cuda", False, "off", "cuda", ["cpu"]),
        ("cuda", False, "on device", "cuda", []),
        ("cuda", True, "in RAM", "cpu", ["cpu"]),
        ("cpu", False, "in RAM", "cpu", []),
    ],
)
def test_priors_wait_on_their_device_and_follow_the_cache_choice(tmp_path, device, offload, cache, home, parked):
    """Priors stay where the sampler uses them (no device -> RAM -> device trip), in RAM when the model offloads;
    after the run they follow the models: on the device with "on device", in RAM otherwise."""
    from sspir_core.restore.components import ModelSpec, after_run, prior_home

    for name in ("sd", "sspir"):  # the cache choice looks the models up by file identity (nothing is loaded)
        (tmp_path / name).write_bytes(b"")
    spec = ModelSpec(str(tmp_path / "sd"), str(tmp_path / "sspir"), device=device, offload=offload, cache=cache)
    assert prior_home(spec) == torch.device(home)
    prior = _Prior()
    after_run(spec, None, (prior, None))
    assert prior.moves == [torch.device(p) for p in parked]
