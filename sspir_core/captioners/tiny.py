"""Tiny random captioner folders in their real transformers layouts, built offline in about a second.

A byte-level BPE tokenizer trained on a few sentences, configs shrunk to one layer, weights saved with
``save_pretrained`` next to the processor files, so the captioners load them through the same code path as
real downloads. ``sspir demo-models`` writes the LLaVA one; the tests build the others on the same tokenizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

CORPUS = [
    "a photo of a cat sitting on a red chair in a sunny garden with green trees and a blue sky",
    "a detailed picture of a city street at night with cars, people, shops and bright lights",
    "an old stone house beside a calm lake, mountains and clouds in the background",
    "a close up of a dog with brown fur, a wooden table, flowers, a window, a white wall",
]
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def bpe_tokenizer(specials: list[str], vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def seed_weights(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_llava(folder: Path, *, chat_template: bool = True) -> Path:
    """llava-hf layout: LlavaForConditionalGeneration + LlavaProcessor (CLIP image processor, BPE tokenizer)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"]),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_token_id = tok.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    seed_weights(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE if chat_template else None,
        num_additional_image_tokens=1,
    )
    with _quiet_progress():  # a bar for one tiny shard is a line the user of `sspir demo-models` must ignore
        model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """transformers' progress bars off while inside (its "Writing model shards" bar), as they were after."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
