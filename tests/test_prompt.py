"""SSP-IR long-prompt encoding against the method's chunking rule, built by hand in each test."""

from __future__ import annotations

import pytest
import torch

from sspir_core.errors import InputError
from sspir_core.restore.prompt import (
    LongTokens,
    encode_long_prompt,
    encode_prompt_pair,
    group_by_chunks,
    tokenize_long,
    tokenize_negative,
)
from tests.clip_tokenizer_files import BOS_ID, EOS_ID, load_clip_tokenizer

PAD_SD15 = EOS_ID  # SD1.5's tokenizer pads with <|endoftext|>
PAD_SD21 = 0  # SD2.x pads with "!"


@pytest.fixture(scope="module")
def tok15(tmp_path_factory):
    return load_clip_tokenizer(tmp_path_factory.mktemp("tok15"))


@pytest.fixture(scope="module")
def tok21(tmp_path_factory):
    return load_clip_tokenizer(tmp_path_factory.mktemp("tok21"), pad_token="!")


@pytest.fixture(scope="module")
def text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        eos_token_id=EOS_ID,
    )
    return CLIPTextModel(cfg).eval()


def words(n: int) -> str:
    """A prompt of exactly n CLIP tokens: alternating common words that are single tokens."""
    vocab = ["cat", "dog", "red", "tree"]
    return " ".join(vocab[i % 4] for i in range(n))


def content_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hand_encode(text_encoder, content: list[int], m: int, pad: int) -> torch.Tensor:
    """The method's rule written out directly: chunk i = [BOS] + padded[75i:75i+75] + [EOS], then stitch."""
    padded = content[: 75 * m] + [pad] * (75 * m - len(content[: 75 * m]))
    outs = []
    for i in range(m):
        chunk = torch.tensor([[BOS_ID] + padded[75 * i : 75 * i + 75] + [EOS_ID]])
        with torch.no_grad():
            h = text_encoder(chunk)[0]
        if m == 1:
            outs.append(h)
        elif i == 0:
            outs.append(h[:, :76])
        elif i == m - 1:
            outs.append(h[:, 1:])
        else:
            outs.append(h[:, 1:76])
    return torch.cat(outs, dim=1)


def test_tokenizer_helper_matches_open_clip(tok15):
    import open_clip

    text = "A photo of a cat, sitting on the mat; it's 1234 HAPPY emoji!!"
    ref = open_clip.get_tokenizer("ViT-L-14")([text])[0].tolist()
    ids = tok15(text)["input_ids"]
    assert ids == ref[: len(ids)]
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID


def test_words_helper_gives_exact_token_counts(tok15):
    for n in (10, 75, 76, 100, 400):
        assert len(content_ids(tok15, words(n))) == n


def test_short_prompt_layout(tok15):
    content = content_ids(tok15, "a photo of a cat")
    assert len(content) == 5
    t = tokenize_long(tok15, ["a photo of a cat"])
    assert isinstance(t, LongTokens)
    assert t.num_chunks == 1 and t.length == 77
    assert t.input_ids.tolist() == [[BOS_ID] + content + [PAD_SD15] * 70 + [EOS_ID]]


@pytest.mark.parametrize("n, m", [(0, 1), (10, 1), (75, 1), (76, 2), (100, 2), (150, 2), (200, 3), (300, 4), (400, 4)])
def test_chunk_count_and_truncation(tok15, n, m):
    t = tokenize_long(tok15, [words(n)])
    assert t.num_chunks == m
    assert t.input_ids.shape == (1, 75 * m + 2)
    content = content_ids(tok15, words(n))[:300]
    row = t.input_ids[0].tolist()
    assert row[0] == BOS_ID and row[-1] == EOS_ID
    assert row[1 : 1 + len(content)] == content
    assert row[1 + len(content) : -1] == [PAD_SD15] * (75 * m - len(content))


def test_max_chunks_option(tok15):
    t = tokenize_long(tok15, [words(400)], max_chunks=2)
    assert t.num_chunks == 2 and t.input_ids.shape == (1, 152)
    assert t.input_ids[0, 1:151].tolist() == content_ids(tok15, words(150))


@pytest.mark.parametrize("n, length", [(10, 77), (100, 152), (200, 227), (400, 302)])
def test_encoded_length_and_values(tok15, text_encoder, n, length):
    with torch.no_grad():
        out = encode_long_prompt(text_encoder, tok15, [words(n)])
    assert out.shape == (1, length, 32)
    m = (length - 2) // 75
    expected = hand_encode(text_encoder, content_ids(tok15, words(n)), m, PAD_SD15)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_first_chunk_part_is_first_77_ids_minus_last(tok15, text_encoder):
    content = content_ids(tok15, words(200))
    first = torch.tensor([[BOS_ID] + content[:75] + [EOS_ID]])
    with torch.no_grad():
        out = encode_long_prompt(text_encoder, tok15, words(200))
        ref = text_encoder(first)[0]
    torch.testing.assert_close(out[:, :76], ref[:, :76], atol=1e-5, rtol=1e-5)
    # the forced EOS of chunk 0 is dropped: position 76 is chunk 1's first real token, not chunk 0's EOS
    assert not torch.allclose(out[:, 76], ref[:, 76], atol=1e-3)


def test_batch_short_and_long_share_length(tok15, text_encoder):
    short, long = "a photo of a cat", words(160)
    with torch.no_grad():
        out = encode_long_prompt(text_encoder, tok15, [short, long])
    assert out.shape == (2, 227, 32)
    exp_short = hand_encode(text_encoder, content_ids(tok15, short), 3, PAD_SD15)
    exp_long = hand_encode(text_encoder, content_ids(tok15, long), 3, PAD_SD15)
    torch.testing.assert_close(out[0:1], exp_short, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:2], exp_long, atol=1e-5, rtol=1e-5)


def test_negative_empty_padded_to_positive_length(tok15, text_encoder):
    with torch.no_grad():
        pos, neg = encode_prompt_pair(text_encoder, tok15, [words(100), words(30)], "")
    assert pos.shape == neg.shape == (2, 152, 32)
    exp_neg = hand_encode(text_encoder, [], 2, PAD_SD15)
    torch.testing.assert_close(neg, exp_neg.expand(2, -1, -1), atol=1e-5, rtol=1e-5)
    exp_pos0 = hand_encode(text_encoder, content_ids(tok15, words(100)), 2, PAD_SD15)
    torch.testing.assert_close(pos[0:1], exp_pos0, atol=1e-5, rtol=1e-5)


def official_negative(text_encoder, content: list[int], length: int, pad: int) -> tuple[list[int], torch.Tensor]:
    """The official inference code's unconditional prompt, written out from its description: the tokenizer's
    ``padding="max_length", max_length=L, truncation=True`` ids ``[BOS] + tokens + [EOS] + [PAD]*``, chunked with
    each chunk's first id forced to the row's first id and its last id forced to the ROW'S LAST id."""
    content = content[: length - 2]
    ids = [BOS_ID] + content + [EOS_ID] + [pad] * (length - 2 - len(content))
    m = (length - 2) // 75
    with torch.no_grad():
        if m == 1:
            return ids, text_encoder(torch.tensor([ids]))[0]
        outs = []
        for i in range(m):
            chunk = ids[75 * i : 75 * i + 77]
            chunk = [ids[0]] + chunk[1:-1] + [ids[-1]]
            h = text_encoder(torch.tensor([chunk]))[0]
            outs.append(h[:, :76] if i == 0 else h[:, 1:] if i == m - 1 else h[:, 1:76])
    return ids, torch.cat(outs, dim=1)


@pytest.mark.parametrize("base", ["sd15", "sd21"])
@pytest.mark.parametrize("negative", ["", "blurry, low quality, noisy"])
@pytest.mark.parametrize("n_pos", [5, 100, 160])
def test_negative_layout_matches_official(request, text_encoder, base, negative, n_pos):
    tok = request.getfixturevalue("tok15" if base == "sd15" else "tok21")
    pad = PAD_SD15 if base == "sd15" else PAD_SD21
    length = {5: 77, 100: 152, 160: 227}[n_pos]
    ids, expected = official_negative(text_encoder, content_ids(tok, negative), length, pad)
    assert len(ids) == length
    assert tokenize_negative(tok, [negative], length).input_ids.tolist() == [ids]
    with torch.no_grad():
        pos, neg = encode_prompt_pair(text_encoder, tok, [words(n_pos)], negative)
    assert pos.shape == neg.shape == (1, length, 32)
    torch.testing.assert_close(neg, expected, atol=1e-5, rtol=1e-5)


def test_sd21_empty_negative_is_eos_then_exclamation_marks(tok21):
    # "" -> [BOS, EOS, "!" x 75]: the EOS comes first, the pad after (not [BOS, "!" x 75, EOS] as for captions)
    assert tokenize_negative(tok21, "", 77).input_ids.tolist() == [[BOS_ID, EOS_ID] + [PAD_SD21] * 75]


def test_negative_longer_than_positive_is_cut_to_its_length(tok15, tok21, text_encoder):
    for tok, pad in ((tok15, PAD_SD15), (tok21, PAD_SD21)):
        with torch.no_grad():
            pos, neg = encode_prompt_pair(text_encoder, tok, "a cat", [words(250)])
        assert pos.shape == neg.shape == (1, 77, 32)
        ids, expected = official_negative(text_encoder, content_ids(tok, words(250)), 77, pad)
        assert ids == [BOS_ID] + content_ids(tok, words(75)) + [EOS_ID]
        torch.testing.assert_close(neg, expected, atol=1e-5, rtol=1e-5)


def test_group_by_chunks_keeps_each_prompt_at_its_own_length(tok15):
    prompts = ["a cat", words(100), "a dog", words(300), words(80)]
    assert group_by_chunks(tok15, prompts) == [[0, 2], [1, 4], [3]]


def test_sd21_pad_token_is_used(tok15, tok21, text_encoder):
    t21 = tokenize_long(tok21, ["a photo of a cat"])
    content = content_ids(tok21, "a photo of a cat")
    assert t21.input_ids.tolist() == [[BOS_ID] + content + [PAD_SD21] * 70 + [EOS_ID]]
    with torch.no_grad():
        out21 = encode_long_prompt(text_encoder, tok21, [words(100)])
        out15 = encode_long_prompt(text_encoder, tok15, [words(100)])
    exp21 = hand_encode(text_encoder, content_ids(tok21, words(100)), 2, PAD_SD21)
    torch.testing.assert_close(out21, exp21, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out21, out15, atol=1e-3)


def test_bad_prompts_raise_input_error(tok15, text_encoder):
    with pytest.raises(InputError, match="expected a string"):
        tokenize_long(tok15, ["ok", 3])
    with pytest.raises(InputError, match="no prompt"):
        tokenize_long(tok15, [])
    with pytest.raises(InputError, match="negative"):
        encode_prompt_pair(text_encoder, tok15, ["a", "b", "c"], ["x", "y"])
