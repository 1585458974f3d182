"""The restoration pipeline on tiny random models: options, determinism, sizes, tiling, errors."""

from __future__ import annotations

import pytest
import torch

from sspir_core.demo.presets import tiny_random_pipeline
from sspir_core.errors import InputError, OptionError
from sspir_core.restore.pipeline import (
    OutOfMemory,
    RestoreCancelled,
    RestoreOptions,
    latent_preview,
    restore_image,
)
from tests.conftest import wake_zero_convs

FAST = dict(steps=2, vae_tile=None)


@pytest.fixture(scope="module")
def pipe():
    p = tiny_random_pipeline(seed=0)
    wake_zero_convs(p.models.controlnet)
    return p


@pytest.fixture(scope="module")
def lq():
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, 64, 64, generator=g)


def run(pipe, lq, caption="a cat", **kw):
    return pipe.restore(lq, caption, RestoreOptions(**{**FAST, **kw}))


def test_output_shape_range_and_determinism(pipe, lq):
    a = run(pipe, lq[:1], seed=5)
    b = run(pipe, lq[:1], seed=5)
    c = run(pipe, lq[:1], seed=6)
    assert a.shape == (1, 3, 64, 64) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_same_seed_same_output_in_a_batch_or_alone(pipe, lq):
    batch = run(pipe, lq, caption=["a cat", "a dog"], seed=9)
    for i, cap in enumerate(["a cat", "a dog"]):
        alone = run(pipe, lq[i : i + 1], caption=cap, seed=9)
        assert torch.allclose(batch[i : i + 1], alone, atol=1e-4), i


def test_each_image_of_a_batch_gets_what_it_gets_alone_whatever_the_other_captions(pipe):
    # Captions of 1, 2 and 1 chunks, and a negative prompt: neither the long caption nor its padding may leak
    # into the short captions' images (before grouping, image 0 moved by ~0.1).
    lq3 = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    caps = ["a cat", "word " * 100, "a dog"]
    seen = []
    opts = dict(seed=9, negative_prompt="blurry")
    batch = pipe.restore(lq3, caps, RestoreOptions(**FAST, **opts), callback=lambda i, n, z: seen.append((i, n)))
    assert seen == [(i, 4) for i in range(1, 5)]  # two groups of 2 steps, counted as one run
    for i, cap in enumerate(caps):
        alone = run(pipe, lq3[i : i + 1], caption=cap, **opts)
        assert (batch[i : i + 1] - alone).abs().max() < 1e-4, i


def test_every_scheduler_runs_deterministically_from_the_papers_start(pipe, lq, monkeypatch):
    """Same seed, same output for each sampler; the alpha-based ones start from exactly DDPM's latents (the LQ
    latent noised to t=999), Euler from its own first sigma; and each sampler really changes the result."""
    starts, outs = {}, {}
    real = pipe.denoise

    def record(latents, *a, **k):
        scheduler = k.get("scheduler", a[-1] if a else None)  # _restore hands over the scheduler it noised with
        starts.setdefault(type(scheduler).__name__, latents.clone())
        return real(latents, *a, **k)

    monkeypatch.setattr(pipe, "denoise", record)
    for name in ("ddpm", "ddim", "dpmpp", "unipc", "euler"):
        outs[name] = run(pipe, lq[:1], scheduler=name, steps=3)  # with 2 the multistep solvers reduce to DDIM
        assert torch.equal(run(pipe, lq[:1], scheduler=name, steps=3), outs[name]), name
    ddpm = starts["DDPMScheduler"]
    for cls in ("DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
        assert torch.equal(starts[cls], ddpm), cls
    assert not torch.allclose(starts["EulerDiscreteScheduler"], ddpm)
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)


@pytest.mark.parametrize(
    "change",
    [
        dict(start="noise"),
        dict(cfg=1.0),
        dict(conditioning_scale=0.3),
        dict(color_fix="wavelet"),
        dict(color_fix="none"),
        dict(negative_prompt="blurry"),
    ],
)
def test_each_option_changes_the_result(pipe, lq, change):
    base = run(pipe, lq[:1])
    assert not torch.allclose(run(pipe, lq[:1], **change), base, atol=1e-6)


def test_caption_changes_the_result_and_long_captions_work(pipe, lq):
    short = run(pipe, lq[:1], caption="a cat")
    long_ = "a very detailed photo of a tabby cat sitting on a wooden table near a window, " * 8  # > 300 tokens
    assert not torch.allclose(run(pipe, lq[:1], caption=long_), short)
    run(pipe, lq[:1], caption="word " * 100)  # between 75 and 150 tokens: two chunks


def test_tiled_equals_untiled_when_one_tile_covers(pipe, lq):
    untiled = run(pipe, lq[:1], tile=None)
    one_tile = run(pipe, lq[:1], tile=8, tile_overlap=2)  # latent is 8x8
    assert torch.equal(untiled, one_tile)


def test_tiled_restore_stays_close_to_untiled_on_a_smooth_image(pipe):
    """Latent tiles (8x8 of a 8x16 latent, overlap 4) and VAE tiles (64 px) change a smooth image's result by
    at most 0.03 on average: under a quarter of what the restoration itself changes (measured: about 0.01-0.017
    against 0.14; misplaced or unblended tiles give differences of the restoration's own size)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 128), indexing="ij")
    x = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.15 * (xx - yy)]).unsqueeze(0)
    untiled = pipe.restore(x, "a wall", RestoreOptions(steps=2, tile=None, vae_tile=None))
    change = (untiled - x).abs().mean()
    for tiles in (dict(tile=8, tile_overlap=4, vae_tile=None), dict(tile=8, tile_overlap=4, vae_tile=64)):
        tiled = pipe.restore(x, "a wall", RestoreOptions(steps=2, **tiles))
        diff = (tiled - untiled).abs().mean()
        assert tiled.shape == x.shape and diff < 0.03 and diff < 0.25 * change, (tiles, float(diff), float(change))


def test_restore_image_upscales_odd_sizes_and_crops_back(pipe):
    x = torch.rand(1, 3, 37, 53)
    out = restore_image(pipe, x, "", RestoreOptions(**FAST), upscale=1.0)
    assert out.shape == (1, 3, 37, 53)
    out2 = restore_image(pipe, torch.rand(1, 3, 10, 12), "", RestoreOptions(**FAST), target_size=(50, 41))
    assert out2.shape == (1, 3, 41, 50)


def test_one_pixel_wide_input_is_a_clear_error(pipe):
    with pytest.raises(InputError, match="at least"):
        restore_image(pipe, torch.rand(1, 3, 40, 1), "", RestoreOptions(**FAST))


def test_bad_captions_and_shapes(pipe, lq):
    with pytest.raises(InputError, match="2 captions for 1 images"):
        pipe.restore(lq[:1], ["a", "b"], RestoreOptions(**FAST))
    with pytest.raises(InputError, match="multiples of 8"):
        pipe.restore(torch.rand(1, 3, 30, 30), "", RestoreOptions(**FAST))
    with pytest.raises(InputError, match="scheduler 'heun' is unknown"):
        RestoreOptions(scheduler="heun")


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("steps", 2.5),
        ("steps", 1001),
        ("cfg", float("nan")),
        ("cfg", float("inf")),
        ("cfg", -1.0),
        ("scheduler", "heun"),
        ("negative_prompt", None),
        ("conditioning_scale", float("nan")),
        ("start", "middle"),
        ("seed", -1),
        ("seed", 2**64),
        ("color_fix", "sepia"),
        ("tile", 0),
        ("tile_overlap", -1),
        ("vae_tile", 4),
        ("max_chunks", 0),
        ("steps", True),
    ],
)
def test_every_option_is_checked_and_names_itself(field, value):
    with pytest.raises(OptionError) as e:
        RestoreOptions(**{field: value})
    assert e.value.option == field and str(e.value).startswith(field)
    assert e.value.named({field: "--my-flag"}).startswith("--my-flag ")


def test_restore_checks_options_changed_after_they_were_made_before_any_work(pipe, lq, monkeypatch):
    opts = RestoreOptions(**FAST)
    opts.cfg = float("nan")
    monkeypatch.setattr(pipe, "encode_text", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(OptionError, match="cfg must be a finite number"):
        pipe.restore(lq[:1], "", opts)


def test_callback_progress_preview_and_stop(pipe, lq):
    seen = []

    def cb(i, n, z):
        seen.append((i, n, latent_preview(z).shape))
        return i < 2

    with pytest.raises(RestoreCancelled, match="step 2/3"):
        pipe.restore(lq[:1], "", RestoreOptions(steps=3, vae_tile=None), callback=cb)
    assert [s[:2] for s in seen] == [(1, 3), (2, 3)] and seen[0][2] == (1, 3, 8, 8)


def test_out_of_memory_becomes_advice(pipe, lq, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipe, "denoise", oom)
    with pytest.raises(OutOfMemory, match="smaller tile.*fp16"):
        run(pipe, lq[:1])


def test_bf16_and_offload_paths_run(lq):
    p16 = tiny_random_pipeline(seed=0, dtype=torch.bfloat16)
    out = p16.restore(lq[:1], "a cat", RestoreOptions(**FAST))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert next(p16.models.unet.parameters()).dtype == torch.bfloat16

    ref = tiny_random_pipeline(seed=0).restore(lq[:1], "a cat", RestoreOptions(**FAST))
    off = tiny_random_pipeline(seed=0)
    off.offload = True
    assert torch.equal(off.restore(lq[:1], "a cat", RestoreOptions(**FAST)), ref)
    assert all(next(m.parameters()).device.type == "cpu" for m in off._all_modules())


def test_building_and_running_change_no_process_wide_state(lq, monkeypatch):
    import logging

    import diffusers.utils.logging as diffusers_logging

    calls = []
    monkeypatch.setattr(diffusers_logging, "set_verbosity", lambda level: calls.append(level))
    monkeypatch.setattr(diffusers_logging, "set_verbosity_error", lambda: calls.append("error"))
    rng = torch.random.get_rng_state().clone()
    filters = list(logging.getLogger().filters)
    p = tiny_random_pipeline(seed=3, dtype=torch.bfloat16)  # bf16: every module is cast
    p.offload = True  # and moved at every stage
    p.restore(lq[:1], "a cat", RestoreOptions(**FAST))
    assert torch.equal(torch.random.get_rng_state(), rng), "torch's global RNG was seeded or drawn from"
    assert calls == [] and logging.getLogger().filters == filters


@pytest.mark.slow  # builds three random pipelines
def test_random_presets_are_reproducible_from_their_own_generator():
    a, b, c = (tiny_random_pipeline(seed=s) for s in (5, 5, 6))
    for name in ("unet", "controlnet", "refine"):
        sa, sb, sc = (getattr(p.models, name).state_dict() for p in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    te = a.text_encoder.state_dict()
    assert all(torch.equal(te[k], b.text_encoder.state_dict()[k]) for k in te)
    # the ControlNet starts as a copy of the UNet encoder, as the official trainer's does
    unet = a.models.unet.state_dict()
    assert torch.equal(a.models.controlnet.state_dict()["conv_in.weight"], unet["conv_in.weight"])


class _WatchedLock:
    """A pipeline's lock that tells (``waited``) when a thread found it held and had to wait."""

    def __init__(self, lock, waited):
        self.lock, self.waited = lock, waited

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.waited.set()
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


def test_two_threads_on_one_pipeline_run_one_after_the_other_with_the_same_results(lq, monkeypatch):
    """The first run stays inside its denoise until the second run has either waited for the pipeline's lock or
    entered denoise beside it (an overlap): so the order, not a pause, decides what the test sees."""
    import threading

    from tests.waiting import HANG_GUARD_S

    p = tiny_random_pipeline(seed=0)
    p.offload = True  # the case where overlapping runs would move each other's modules away
    expected = p.restore(lq[:1], "a cat", RestoreOptions(**FAST))
    second_arrived = threading.Event()
    lock = "lock"
    monkeypatch.setattr(p, lock, _WatchedLock(getattr(p, lock), second_arrived))
    active, overlaps = [], []
    real_denoise = p.denoise

    def watched(*a, **k):
        overlaps.append(len(active))
        active.append(1)
        try:
            if len(overlaps) == 1:
                assert second_arrived.wait(HANG_GUARD_S), "the second run neither waited nor overlapped"
            else:
                second_arrived.set()
            return real_denoise(*a, **k)
        finally:
            active.pop()

    monkeypatch.setattr(p, "denoise", watched)
    results: list = [None, None]

    def work(i):
        results[i] = p.restore(lq[:1], "a cat", RestoreOptions(**FAST))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [0, 0]
    for r in results:
        assert torch.equal(r, expected)


def test_offload_puts_each_model_on_the_device_only_while_it_runs(lq, monkeypatch):
    """With offload every module runs only between its move to the device and its move back, and all end on
    the CPU. "cpu:0" stands in for an accelerator: a different device from "cpu" to move to, on any machine."""
    import sspir_core.restore.pipeline as pipeline

    p = tiny_random_pipeline(seed=0)
    ref = p.restore(lq[:1], "a cat", RestoreOptions(**FAST))
    p.offload, p.device = True, torch.device("cpu", 0)
    modules = {
        "unet": p.models.unet,
        "controlnet": p.models.controlnet,
        "refine": p.models.refine,
        "vae": p.vae,
        "text_encoder": p.text_encoder,
        "clip_vision": p.clip_vision,
    }
    name_of = {id(m): n for n, m in modules.items()}
    placed, ran, moves = set(), [], []
    real_move = pipeline.move_module

    def move(module, device, dtype=None):
        name = name_of.get(id(module))
        if name is not None:
            moves.append((name, str(device)))
            (placed.add if torch.device(device) == p.device else placed.discard)(name)
        return real_move(module, device, dtype)

    def check(name):
        def hook(module, args):
            ran.append(name)
            assert name in placed, f"{name} ran while offloaded"

        return hook

    monkeypatch.setattr(pipeline, "move_module", move)
    runs = [(n, m) for n, m in modules.items() if n != "vae"] + [("vae", p.vae.encoder), ("vae", p.vae.decoder)]
    handles = [m.register_forward_pre_hook(check(n)) for n, m in runs]
    try:
        out = p.restore(lq[:1], "a cat", RestoreOptions(**FAST))
    finally:
        for h in handles:
            h.remove()
    assert set(ran) == set(modules) and placed == set()
    assert {n for n, d in moves if d == "cpu:0"} == set(modules)  # each really went to the device and back
    assert all(next(m.parameters()).device == torch.device("cpu") for m in modules.values())
    assert torch.equal(out, ref)


def test_a_caption_longer_than_four_chunks_is_cut_with_a_warning_that_counts_the_tokens(pipe, lq, caplog):
    """A 100 kB caption is encoded as its first 300 tokens (the official 4 x 75); the log says so, with the
    count. "cat" is one CLIP token, so 1000 of them are 1000 tokens."""
    assert len(pipe.tokenizer("cat", add_special_tokens=False)["input_ids"]) == 1
    with caplog.at_level("WARNING", logger="sspir_core.restore.prompt"):
        run(pipe, lq[:1], caption="a cat")
    assert not [r for r in caplog.records if "tokens" in r.getMessage()]
    long = " ".join(["cat"] * 1000)
    with caplog.at_level("WARNING", logger="sspir_core.restore.prompt"):
        run(pipe, lq[:1], caption=long, steps=1)
    (record,) = [r for r in caplog.records if "tokens" in r.getMessage()]
    assert "has 1000 tokens: only the first 300 are used" in record.getMessage()
    assert "the other 700 are ignored" in record.getMessage()
