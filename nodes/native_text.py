"""SSP-IR Text Encode: captions -> CONDITIONING with SSP-IR's long-prompt chunking (not ComfyUI's)."""

from __future__ import annotations

from typing import Any

from sspir_core.errors import InputError
from sspir_core.native.text import MIXED_LENGTHS
from sspir_core.restore.prompt import DEFAULT_MAX_CHUNKS

from .api import io
from .sockets import NATIVE
from .support import captions_for_batch, flatten_strings, single


def _host_tokenizer(clip: Any) -> tuple[Any, str]:
    """ComfyUI's SD1/SD2 tokenizer inside a CLIP: (its SDTokenizer, the token dict key)."""
    outer = getattr(clip, "tokenizer", None)
    inner = getattr(outer, getattr(outer, "clip", ""), None)
    if inner is None or not hasattr(inner, "tokenizer") or not hasattr(outer, "clip_name"):
        raise InputError(
            "SSP-IR Text Encode needs the CLIP of an SD1.x/2.x checkpoint (one CLIP text encoder); "
            f"got {type(outer).__name__}"
        )
    return inner, outer.clip_name


def encode(
    clip: Any, captions: list[str], negative: str, max_chunks: int, mixed: str = MIXED_LENGTHS[0]
) -> tuple[list, list]:
    from sspir_core.native.text import TokenizerIds, encode_windows, layout_pair

    inner, key = _host_tokenizer(clip)
    tokenizer = TokenizerIds(inner.tokenizer, inner.start_token, inner.end_token, inner.pad_token)
    pos, neg = layout_pair(tokenizer, captions, negative, max_chunks, mixed)
    pooled = {}

    def run(windows: list[list[int]], tag: str):
        out = clip.encode_from_tokens({key: [[(t, 1.0) for t in w] for w in windows]}, return_pooled=True)
        pooled.setdefault(tag, []).append(out[1])
        return out[0]

    import torch

    conds = []
    for tag, tokens in (("pos", pos), ("neg", neg)):
        cond = encode_windows(tokens, lambda w, tag=tag: run(w, tag))
        conds.append([[cond, {"pooled_output": torch.cat(pooled[tag])}]])
    return conds[0], conds[1]


class SSPIRTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRTextEncode",
            display_name="SSP-IR Text Encode",
            category=NATIVE,
            description="Encodes the caption(s) the way SSP-IR was trained: up to 4 x 75 tokens joined as the "
            "official code does (ComfyUI's own chunking differs), and the negative laid out to the caption's length.",
            is_input_list=True,  # a per-image caption list (MLLM Caption) becomes one batched CONDITIONING
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of your SD1.5/SD2.1 checkpoint (Load Checkpoint)."),
                io.String.Input(
                    "caption",
                    default="",
                    multiline=True,
                    tooltip=(
                        "The explicit semantic prior: type it or connect a STRING (MLLM Caption's per-image list gives "
                        "one row per image, in batch order)."
                    ),
                ),
                io.String.Input(
                    "negative_prompt",
                    default="",
                    multiline=True,
                    tooltip=("The unconditional text of CFG; the paper uses an empty one."),
                ),
                io.Int.Input(
                    "max_chunks",
                    default=DEFAULT_MAX_CHUNKS,
                    min=1,
                    max=8,
                    tooltip=("Most 75-token chunks a caption keeps (the official code: 4 = 300 tokens)."),
                ),
                io.Combo.Input(
                    "mixed_lengths",
                    options=list(MIXED_LENGTHS),
                    default=MIXED_LENGTHS[0],
                    tooltip=(
                        "When a caption list's captions need different numbers of 75-token chunks (one CONDITIONING "
                        "holds one length):\n- pad to longest: every caption gets the longest one's count, as the "
                        "official code lays out a batch (a shorter caption's image then differs slightly from "
                        "its image "
                        "alone)\n- refuse: an error; PGA Sampler samples each count apart instead"
                    ),
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The caption(s): KSampler's positive."),
                io.Conditioning.Output(display_name="negative", tooltip="KSampler's negative."),
            ],
        )

    @classmethod
    def execute(cls, clip, caption, negative_prompt, max_chunks, mixed_lengths=MIXED_LENGTHS[0]) -> io.NodeOutput:
        captions = captions_for_batch(caption, len(flatten_strings(caption) or [""]))
        pos, neg = encode(
            single("clip", clip),
            captions,
            single("negative_prompt", negative_prompt),
            int(single("max_chunks", max_chunks)),
            single("mixed_lengths", mixed_lengths),
        )
        return io.NodeOutput(pos, neg)
