"""The configs shipped in ``sspir_core/configs`` and the diffusers-layout folder built from them.

diffusers' ``from_single_file`` needs a config folder in diffusers layout or it goes to the (pulled) hub
repos. The package keeps one copy of each fact: the UNet config lives in ``configs/<base>/unet.json`` (shared
with the SSP-IR model code) and the CLIP BPE vocabulary comes from the file that ``open_clip_torch`` bundles.
``sd_config_dir`` assembles the complete folder once per process in a temporary directory.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import importlib.util
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
BASES = ("sd15", "sd21")
CLIP_VISION_CONFIG = CONFIGS_DIR / "clip_vision_vit_l14.json"

# safetensors metadata keys under which a file may carry its own configs (tiny demo models, custom sizes):
# SD single files hold {"unet": {...}, "vae": {...}, "text_encoder": {...}} diffusers/transformers configs,
# CLIP vision files hold a transformers CLIPVisionConfig. Files without them use the bundled full-size configs.
SD_CONFIGS_METADATA = "sspir_sd_configs"
CLIP_VISION_CONFIG_METADATA = "sspir_clip_vision_config"
SD_CONFIG_PARTS = ("unet", "vae", "text_encoder")

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON file as a dict, with an error that names the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Could not read config {path}: {exc}") from exc


def check_base(base: str) -> str:
    if base not in BASES:
        raise CheckpointError(f"Unknown base model {base!r}: use one of {', '.join(BASES)}.")
    return base


def component_config(config_dir: str | Path, part: str) -> dict[str, Any]:
    """``<config_dir>/<part>/config.json`` of a diffusers-layout folder."""
    path = Path(config_dir) / part / "config.json"
    if not path.is_file():
        raise CheckpointError(f"Config folder {config_dir} has no {part}/config.json (diffusers layout expected).")
    return read_json(path)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte->printable-character table: printable Latin-1 bytes map to themselves."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def _open_clip_bpe_file() -> Path:
    """The BPE merge list inside the installed ``open_clip_torch`` (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("open_clip_torch is not installed; it provides the CLIP tokenizer vocabulary.")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise CheckpointError(f"open_clip_torch has no {path.name}; reinstall open_clip_torch.")
    return path


def write_clip_vocab(folder: str | Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` of the CLIP BPE tokenizer (49,408 tokens) into ``folder``.

    Same construction as CLIP: bytes, bytes + "</w>", the first 48,894 merges, then BOS and EOS.
    """
    n_merges = CLIP_VOCAB_SIZE - 2 * 256 - 2
    with gzip.open(_open_clip_bpe_file(), "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1 : 1 + n_merges]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(merges) != n_merges or len(vocab) != CLIP_VOCAB_SIZE:
        raise CheckpointError(f"CLIP vocabulary built from {_open_clip_bpe_file()} has {len(vocab)} tokens.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


@cache
def _scratch_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="sspir-configs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def sd_config_dir(base: str) -> Path:
    """A complete diffusers-layout config folder (no weights) for ``base``, usable as ``config=`` in diffusers.

    Built once per process from the bundled configs: ``unet.json`` goes to ``unet/config.json`` and the
    tokenizer vocabulary is generated from open_clip's BPE file.
    """
    source = CONFIGS_DIR / check_base(base)
    target = _scratch_dir() / base
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("unet.json"), dirs_exist_ok=True)
    (target / "unet").mkdir(exist_ok=True)
    shutil.copyfile(source / "unet.json", target / "unet" / "config.json")
    write_clip_vocab(target / "tokenizer")
    return target


def embedded_config_dir(configs_json: str, base: str) -> Path:
    """A diffusers-layout config folder for configs carried in a file's metadata (``SD_CONFIGS_METADATA``).

    The scheduler and tokenizer are the bundled ones of ``base``; the folder is made once per distinct configs.
    """
    try:
        configs = json.loads(configs_json)
    except ValueError as exc:
        raise CheckpointError(f"{SD_CONFIGS_METADATA} metadata is not valid JSON: {exc}") from exc
    missing = [p for p in SD_CONFIG_PARTS if not isinstance(configs.get(p), dict)]
    if missing:
        raise CheckpointError(f"{SD_CONFIGS_METADATA} metadata lacks the {', '.join(missing)} config(s)")
    digest = hashlib.sha256(f"{base}\n{configs_json}".encode()).hexdigest()[:16]
    target = _scratch_dir() / f"embedded-{digest}"
    if not (target / "scheduler").is_dir():
        shutil.copytree(sd_config_dir(base), target, dirs_exist_ok=True)
        for part in SD_CONFIG_PARTS:
            (target / part).mkdir(parents=True, exist_ok=True)
            (target / part / "config.json").write_text(json.dumps(configs[part]), encoding="utf-8")
    return target
