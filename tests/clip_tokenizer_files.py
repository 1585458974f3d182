"""Build a real CLIP BPE tokenizer offline, for tests.

No CLIP tokenizer can be downloaded here, but the ``open_clip_torch`` wheel bundles the original BPE merge
list (``bpe_simple_vocab_16e6.txt.gz``).  From it we write the ``vocab.json`` / ``merges.txt`` pair that
transformers' ``CLIPTokenizer`` reads (49,408 tokens, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407),
so prompt tests tokenise exactly as Stable Diffusion's tokenizer does.  This helper is deliberately
independent of the package's own bundled tokenizer so that the two can be checked against each other.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407
# Number of merges CLIP uses: vocab = 256 bytes + 256 end-of-word bytes + merges + 2 specials = 49408.
_N_MERGES = VOCAB_SIZE - 2 * 256 - 2


def _read_merges() -> list[str]:
    """The first ``_N_MERGES`` merge lines of the bundled file (its line 0 is a version header)."""
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : 1 + _N_MERGES]
    if len(merges) != _N_MERGES:
        raise RuntimeError(f"bundled BPE file has {len(merges)} merges, expected {_N_MERGES}")
    return merges


def _build_vocab(merges: list[str]) -> dict[str, int]:
    """CLIP's vocabulary order: bytes, bytes + '</w>', merged pairs in rank order, then BOS, EOS."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"built CLIP vocab has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    """Read and build once per test session (about 0.7 s)."""
    merges = _read_merges()
    return _build_vocab(merges), tuple(merges)


def write_clip_tokenizer_files(folder: str | Path, pad_token: str = EOS_TOKEN) -> Path:
    """Write a transformers CLIP tokenizer folder (vocab, merges, configs) into ``folder``.

    ``pad_token`` is ``<|endoftext|>`` for SD1.5 and ``"!"`` (id 0) for SD2.x.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def load_clip_tokenizer(folder: str | Path, pad_token: str = EOS_TOKEN):
    """Write the files into ``folder`` and load them with transformers' ``CLIPTokenizer``, offline."""
    from transformers import CLIPTokenizer

    path = write_clip_tokenizer_files(folder, pad_token=pad_token)
    tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    if len(tok) != VOCAB_SIZE or tok.bos_token_id != BOS_ID or tok.eos_token_id != EOS_ID:
        raise RuntimeError("CLIP tokenizer built from the bundled BPE file did not load as expected")
    return tok
