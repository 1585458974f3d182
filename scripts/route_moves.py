"""Data movement on the component route, side by side for two checkouts, in one run.

    python scripts/route_moves.py OLD_CHECKOUT [NEW_CHECKOUT]   # NEW defaults to this checkout

Each checkout runs the same graph in a child process (its own ``sspir_core`` first on ``sys.path``), through the
library calls the nodes make: CLIP Image Embed, Structure Processor, then PGA Sampler three times (new seeds, priors
reused), on the demo models, fp32, once with cache "on device" and once with "in RAM". The device is ``cpu:0``, a
stand-in that ``torch.device`` tells apart from ``cpu`` (RAM), so a ledger can follow where each module *would* be on
an accelerator: ``move_module`` is wrapped to record every module asked onto the device while it is not there yet
(count, parameter bytes) and back to RAM; no module really moves. Tensor trips are counted at
``Tensor.cpu``/``Tensor.to``: device -> RAM requests (not of a tensor already sent there), and RAM -> device requests
of a tensor that an earlier device -> RAM request returned (a round trip). Also counted: LQ resizes, checkpoint header
reads, and the sha256 of every output (bit-identical results give the same digest).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

DEVICE = "cpu:0"


def _park(components, spec, clip, priors, move) -> None:
    """What ``after_run`` does with "in RAM" on an accelerator (skipped for the ``cpu:0`` stand-in, whose type is
    cpu): every module of the model and the CLIP tower to RAM, and, where the checkout has the policy (``move_to`` on
    the priors), the priors the run used."""
    import torch

    parts = components.MODELS.peek(spec.key())
    for m in [
        parts.vae,
        parts.text_encoder,
        *(m for _, m in parts.models.named_modules_()),
        components.CLIP_VISION.peek(clip.key()),
    ]:
        move(m, torch.device("cpu"))
    for prior in priors:
        if hasattr(prior, "move_to"):
            prior.move_to(torch.device("cpu"))


def _child(models_dir: str, cache: str) -> dict:
    import torch
    from torch.overrides import TorchFunctionMode

    import sspir_core
    from sspir_core import image_io
    from sspir_core.demo import model_files as demo
    from sspir_core.models import build
    from sspir_core.restore import components
    from sspir_core.restore.options import RestoreOptions
    from sspir_core.weights import load_clip_vision, one_step

    device = torch.device(DEVICE)
    stats = {
        "module_moves_to_device": 0,
        "module_bytes_to_device": 0,
        "module_moves_to_ram": 0,
        "tensor_requests_to_ram": 0,
        "tensor_bytes_to_ram": 0,
        "round_trips_back_to_device": 0,
        "round_trip_bytes_back_to_device": 0,
        "lq_resizes": 0,
        "header_reads": 0,
    }
    where: dict[int, torch.device] = {}
    real_move = build.move_module

    def ledger_move(module, target, dtype=None):
        if target is not None:
            target = torch.device(target)
            if where.get(id(module), torch.device("cpu")) != target:
                nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
                if target == device:
                    stats["module_moves_to_device"] += 1
                    stats["module_bytes_to_device"] += nbytes
                else:
                    stats["module_moves_to_ram"] += 1
                where[id(module)] = target
        real_move(module, None, dtype)  # the cast only: everything stays in RAM, the ledger says where it would be

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("sspir_core") and getattr(mod, "move_module", None) is real_move:
            mod.move_module = ledger_move
    build.move_module = ledger_move

    parked: dict[int, weakref.ref] = {}  # id -> tensor (tensors compare elementwise: no WeakSet)

    class Trips(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func in (torch.Tensor.cpu, torch.Tensor.to) and isinstance(args[0], torch.Tensor):
                t = args[0]
                target = (
                    "cpu"
                    if func is torch.Tensor.cpu
                    else next(
                        (str(a) for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))), None
                    )
                )
                nbytes = t.numel() * t.element_size()
                in_ram = id(t) in parked and parked[id(t)]() is t
                if target == "cpu" and not in_ram:  # a tensor already sent to RAM stays put: no request counted
                    stats["tensor_requests_to_ram"] += 1
                    stats["tensor_bytes_to_ram"] += nbytes
                    if isinstance(out, torch.Tensor):
                        parked[id(out)] = weakref.ref(out)
                elif target == DEVICE and in_ram:
                    stats["round_trips_back_to_device"] += 1
                    stats["round_trip_bytes_back_to_device"] += nbytes
            return out

    real_resize = image_io.resize_image
    image_io.resize_image = lambda x, size: (
        stats.__setitem__("lq_resizes", stats["lq_resizes"] + 1) or real_resize(x, size)
    )
    real_read = one_step.read_mode
    one_step.read_mode = lambda p: stats.__setitem__("header_reads", stats["header_reads"] + 1) or real_read(p)

    root = Path(models_dir)
    spec = components.ModelSpec(
        str(root / "checkpoints" / demo.SD_NAME),
        str(root / "sspir" / demo.SSPIR_NAME),
        device=DEVICE,
        dtype="float32",
        cache=cache,
    )
    clip = components.ClipVisionSpec(str(root / "clip_vision" / demo.CLIP_VISION_NAME))
    # loaded into RAM first (as by an earlier prompt, or after "in RAM"), outside the counts
    components.MODELS.get(
        spec.key(), lambda: components.load_pipeline_parts(spec.sd, spec.sspir, spec.base, torch.float32)
    )
    components.CLIP_VISION.get(clip.key(), lambda: load_clip_vision(clip.path))
    stats.update(dict.fromkeys(stats, 0))
    torch.manual_seed(0)
    lq = torch.rand(2, 3, 24, 20)
    per_node, digests = {}, []

    def mark(name: str) -> None:
        per_node[name] = dict(stats)

    from nodes.support import structure_preview  # the Structure Processor's preview, as the node makes it

    with Trips(), torch.no_grad():
        size = components.output_size(lq, 4.0, None)
        embed = components.ImageEmbedPrior(spec, clip, lq)
        embed.at(size)
        mark("CLIP Image Embed")
        structure = components.StructurePrior(spec, lq)
        _, rgbs = structure.at(size)
        prepared = image_io.prepare_lq(lq[:1], target_size=size) if "padded_size" not in dir(image_io) else None
        box, padded = (
            (prepared.box, tuple(prepared.image.shape[-2:]))
            if prepared is not None
            else ((0, size[1], 0, size[0]), image_io.padded_size(size[1], size[0]))
        )
        structure_preview(rgbs, box, padded)
        mark("Structure Processor")
        mode = getattr(components, "checkpoint_mode", None)
        for seed in range(3):
            mode(spec) if mode is not None else one_step.read_mode(spec.sspir)  # as nodes/sampling.run does
            out = components.restore_components(
                spec,
                lq,
                ["a cat", "a dog"],
                RestoreOptions(steps=2, seed=seed),
                4.0,
                None,
                image_embed=embed,
                structure=structure,
                clip=clip,
            )
            components.after_run(spec, clip)
            if cache == "in RAM":
                _park(components, spec, clip, (embed, structure), ledger_move)
            digests.append(hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest()[:16])
            mark(f"PGA Sampler run {seed + 1}")
    return {"sspir_core": str(Path(sspir_core.__file__).parent), "per_node": per_node, "outputs": digests}


def _run(checkout: Path, models_dir: str, cache: str) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=f"{checkout}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--child", models_dir, cache],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{checkout}: child failed\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(_child(sys.argv[2], sys.argv[3])))
        return
    old = Path(sys.argv[1]).resolve()
    new = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(new))
        from sspir_core.demo import model_files

        model_files.write_demo_models(Path(tmp))
        same = all([_compare(old, new, tmp, cache) for cache in ("on device", "in RAM")])
    sys.exit(0 if same else 1)


def _compare(old: Path, new: Path, models_dir: str, cache: str) -> bool:
    results = {"old": _run(old, models_dir, cache), "new": _run(new, models_dir, cache)}
    for side, r in results.items():
        if not r["sspir_core"].startswith(str(old if side == "old" else new)):
            raise SystemExit(f"{side}: ran {r['sspir_core']}, not its checkout")
    keys = list(next(iter(results["old"]["per_node"].values())))
    print(f"\n## cache {cache!r}\n{'after node':<22} {'counter':<34} {'old':>12} {'new':>12}")
    prev = {side: dict.fromkeys(keys, 0) for side in results}
    for node in results["old"]["per_node"]:
        for k in keys:
            o, n = (results[s]["per_node"][node][k] - prev[s][k] for s in ("old", "new"))
            if o or n:
                print(f"{node:<22} {k:<34} {o:>12,} {n:>12,}")
        prev = {s: results[s]["per_node"][node] for s in results}
    for k in keys:
        print(f"{'total':<22} {k:<34} {prev['old'][k]:>12,} {prev['new'][k]:>12,}")
    same = results["old"]["outputs"] == results["new"]["outputs"]
    print(
        f"outputs sha256: old {results['old']['outputs']} new {results['new']['outputs']} -> "
        f"{'bit-identical' if same else 'DIFFERENT'}"
    )
    return same


if __name__ == "__main__":
    main()
