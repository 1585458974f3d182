"""The ``sspir bench`` report: a compact table and one summary line to paste into an issue."""

from __future__ import annotations

import os
from typing import Any

import torch

from .settings import EXTRA_PARTS, EXTRA_SUMMARIES


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_count"] = os.cpu_count()
        try:
            env["load_avg_1m"] = os.getloadavg()[0]
        except OSError:
            pass
    return env


def _si(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops:.0f} FLOP"


def summary_line(r: dict[str, Any]) -> str:
    """One line with the headline figures, to paste into an issue."""
    env = r["env"]
    where = env.get("gpu") or f"cpu x{env.get('threads')}"
    bits = [
        f"sspir bench {r['config']} {r['dtype']}{' compiled' if r.get('compile') else ''} on {where} "
        f"(torch {env['torch']})"
    ]
    if "step" in r:
        s = r["step"]
        cache = "" if s["fast_ratio"] != s["fast_ratio"] else f", x{s['fast_ratio']:.3f} plain path"
        bits.append(f"{s['size_px']}px step {s['ours_ms']:.1f} ms (x{s['ratio']:.2f} stock{cache})")
    if "flops" in r:
        f = r["flops"]
        per = f" = {_si(f['step_flops'] / (r['step']['ours_ms'] / 1000))}/s" if "step" in r else ""
        bits.append(f"{_si(f['step_flops'])}/step{per}, {_si(f['image_flops'])}/image ({f['steps']} steps)")
    if "image" in r:
        i = r["image"]
        bits.append(f"{i['input_px']}px x4 {i['steps']} steps: {i['seconds']:.2f} s/image")
    if "memory" in r and r["memory"]["ratio"] is not None:
        m = r["memory"]
        peaks = ", ".join(f"{row['size_px']}px {row['peak_mib']:.0f} MiB" for row in m["rows"])
        bits.append(
            f"tiled peak above weights ({m['rows'][0].get('measure', '?')}) {peaks}, "
            f"{m['ratio_sizes'][1]}/{m['ratio_sizes'][0]} {m['ratio']:.2f}"
        )
    bits += [summary(r[name]) for name, summary in EXTRA_SUMMARIES.items() if name in r]
    return "; ".join(bits)


def format_report(r: dict[str, Any]) -> str:
    """The compact table ``sspir bench`` prints."""
    env = r["env"]
    where = env.get("gpu") or f"cpu ({env.get('threads')} threads, load {env.get('load_avg_1m', float('nan')):.2f})"
    lines = [f"sspir bench: config {r['config']}, {r['dtype']}, {env['device']}: {where}, torch {env['torch']}"]
    if "step" in r:
        s = r["step"]
        lines += [
            "",
            f"1. per denoising step: latent {s['latent'][0]}x{s['latent'][1]} ({s['size_px']} px), CFG batch "
            f"{s['cfg_batch']}, {s['text_tokens']} text tokens, median of {s['repeats']} x {s['steps_per_repeat']} "
            "steps after a warm-up",
            f"   {'SSP-IR (ControlNet+Processor feats, image+pixel attn)':58s} {s['ours_ms']:10.1f} ms/step",
            f"   {'SSP-IR plain path (no fast paths: the official computation)':58s} {s['plain_ms']:10.1f} ms/step",
            *(
                ["     (CPU: ours and stock with the kept heap of `sspir`, plain with glibc's mmap use)"]
                if s.get("kept_heap")
                else []
            ),
            f"   {'stock diffusers ControlNet + UNet (same UNet config)':58s} {s['baseline_ms']:10.1f} ms/step",
            f"   {'ratio (cost of the SSP-IR attentions)':58s} {s['ratio']:10.2f} x",
            f"   {('compiled ours' if r.get('compile') else 'ours') + ' vs plain (median of paired repeats)':58s} "
            f"{s['fast_ratio']:10.3f} x",
        ]
        lines += [
            f"   {'  time with ' + n + (' off' if s['defaults'][n] else ' on') + ' / with the defaults':58s} "
            f"{v:10.3f} x"
            for n, v in s["toggled"].items()
        ]
    if "flops" in r:
        f = r["flops"]
        lines += [
            "",
            f"model FLOPs (matmul, conv, attention; untiled {f['size_px']} px, CFG batch {f['cfg_batch']})",
            f"   {'per denoising step (ControlNet + UNet)':40s} {_si(f['step_flops']):>14s}",
        ]
        if "step_flops_plain" in f:
            lines.append(
                f"   {'  the plain path':40s} {_si(f['step_flops_plain']):>14s} "
                f"(fast paths: x{f['step_flops'] / f['step_flops_plain']:.3f})"
            )
        lines += [f"   {'once per image: ' + k:40s} {_si(v):>14s}" for k, v in f["parts_flops"].items()]
        lines.append(f"   {'per image (' + str(f['steps']) + ' steps + the above)':40s} {_si(f['image_flops']):>14s}")
        if "step" in r:
            achieved = f["step_flops"] / (r["step"]["ours_ms"] / 1000)
            lines.append(
                f"   {'achieved in the timed steps':40s} {_si(achieved) + '/s':>14s} "
                "(divide by the card's peak for utilisation)"
            )
        if "image" in r:
            lines.append(
                f"   {'achieved over the whole restore':40s} "
                f"{_si(f['image_flops'] / r['image']['seconds']) + '/s':>14s} (untiled count)"
            )
    if "priors" in r:
        p = r["priors"]
        run = "measured" if p["run_measured"] else f"ESTIMATED as {p['run_steps']} x measured ms/step"
        lines += ["", f"2. one-time priors per image at {p['size_px']} px vs a {p['run_steps']}-step denoise ({run})"]
        lines += [f"   {k:22s} {v:10.1f} ms" for k, v in p["parts_ms"].items()]
        lines += [
            f"   {'priors total':22s} {p['priors_ms']:10.1f} ms",
            f"   {str(p['run_steps']) + '-step denoise':22s} {p['run_ms']:10.1f} ms",
            f"   {'priors / run':22s} {p['percent']:10.2f} %   (target <= 5%)",
        ]
    if "image" in r:
        i = r["image"]
        lines += [
            "",
            f"3. whole restore {i['input_px']} px x4 -> {i['size_px']} px, {i['steps']} steps, CFG "
            f"{i['cfg']}: {i['seconds']:.2f} s/image",
        ]
    if "memory" in r:
        m = r["memory"]
        lines += [
            "",
            f"4. peak memory of a tiled restore (latent tile {m['tile']}, overlap {m['tile_overlap']}, "
            f"VAE tile {m['vae_tile']} px, {m['steps']} steps)",
            f"   measured as {m['rows'][0]['method']}; the weights ({m['rows'][0]['models_mib']:.0f} MiB with "
            "libraries) are not counted; output "
            + (f"{m['output_bits']}-bit integers, streamed" if m.get("output_bits") else "float"),
        ]
        lines += [
            f"   {row['size_px']:5d} px {row['peak_mib']:10.1f} MiB   ({row['seconds']:.1f} s)" for row in m["rows"]
        ]
        if m["ratio"] is not None:
            a, b = m["ratio_sizes"]
            lines.append(f"   ratio {b}/{a}: {m['ratio']:.2f}   (target <= 1.3 with tiling on)")
    for name, (_, report_lines) in EXTRA_PARTS.items():
        if name in r:
            lines += ["", *report_lines(r[name])]
    lines += ["", f"total {r['total_s']:.1f} s (build {r['build_s']:.1f} s)"]
    if "summary" in r:
        lines += ["", "summary (paste into an issue):", r["summary"]]
    return "\n".join(lines)
