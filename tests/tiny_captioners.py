"""Tiny random captioner folders (LLaVA, Qwen2-VL, Qwen2.5-VL, BLIP) in their real transformers layouts.

Built offline in about a second each: a byte-level BPE tokenizer trained on a few sentences, configs
shrunk to one layer, weights saved as safetensors with ``save_pretrained`` next to the processor files,
so the captioners load them through the same code path as the real downloads. ``ChatServer`` is an
OpenAI-compatible chat-completions stub on 127.0.0.1 for the ``openai`` backend.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sspir_core.captioners.tiny import CORPUS, LLAVA_CHAT_TEMPLATE, bpe_tokenizer, build_llava, seed_weights  # noqa: E402
from tests.waiting import HANG_GUARD_S  # noqa: E402

__all__ = ["LLAVA_CHAT_TEMPLATE", "ChatServer", "SilentServer", "build_blip", "build_llava", "build_qwen_vl"]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_vl(folder: Path, *, version: str = "2") -> Path:
    """Qwen/Qwen2-VL-*-Instruct (``version="2"``) or Qwen2.5-VL (``"2.5"``) layout."""
    import transformers
    from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(specials),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    text = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": None,
    }
    if version == "2":
        config_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
        vision = {
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
    else:
        config_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
        vision = {
            "depth": 1,
            "hidden_size": 32,
            "out_hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        }
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    seed_weights(1)
    model = model_cls(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    image_processor = Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor_cls = transformers.Qwen2VLProcessor if version == "2" else transformers.Qwen2_5_VLProcessor
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=QWEN_CHAT_TEMPLATE,
        video_processor=transformers.Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
    )
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def build_blip(folder: Path) -> Path:
    """Salesforce/blip-image-captioning-* layout with a tiny WordPiece (BERT) tokenizer."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = sorted({w for line in CORPUS for w in line.replace(",", " ,").split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words, ","]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    vocab_arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tok = BertTokenizerFast(
        **{vocab_arg: str(folder / "vocab.txt")}, do_lower_case=True, bos_token="[DEC]", model_max_length=512
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("[PAD]", "[SEP]", "[DEC]")}
    config = BlipConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 128,
            "bos_token_id": ids["[DEC]"],
            "sep_token_id": ids["[SEP]"],
            "pad_token_id": ids["[PAD]"],
            "eos_token_id": ids["[SEP]"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    seed_weights(2)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) for the lifetime of a ``with`` block; ``url`` ends in /v1."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # shutdown() waits for serve_forever's next poll: 0.05 s instead of the default 0.5 s per server
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class ChatServer(LocalServer):
    """A chat-completions stub on 127.0.0.1 that records requests and can fail the first N."""

    def __init__(self, answer="A cat\n sitting <|im_end|>", fail_first=0, fail_status=503, hold=False):
        """``hold``: each POST is answered only once :attr:`answer_now` is set (by the test, or on exit), so a
        client's timeout is what ends its wait."""
        self.requests: list[dict] = []
        self.answer_now = threading.Event()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                state.requests.append({"path": self.path, "method": "GET"})
                self._send(200, {"data": [{"id": "tiny-vlm"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if hold:
                    state.answer_now.wait(HANG_GUARD_S)
                if len(state.requests) <= fail_first:
                    return self._send(fail_status, {"error": "busy"})
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

        self.serve(Handler)

    def __exit__(self, *exc):
        self.answer_now.set()
        super().__exit__(*exc)


class SilentServer(LocalServer):
    """Accepts each connection and reads the request, then never answers (a server stuck loading a model).

    ``requests`` counts the requests that arrived; ``hung_up`` is set when a client closed its connection.
    Handlers are released when the ``with`` block ends.
    """

    def __init__(self):
        self.requests = 0
        self.hung_up = threading.Event()
        self.release = threading.Event()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _hold(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                state.requests += 1
                self.connection.settimeout(0.05)
                while not state.release.is_set():
                    try:
                        if self.connection.recv(1) == b"":  # the client closed the connection
                            state.hung_up.set()
                            return
                    except TimeoutError:
                        continue
                    except OSError:  # reset by the client
                        state.hung_up.set()
                        return

            do_GET = do_POST = _hold

        self.serve(Handler)

    def __exit__(self, *exc):
        self.release.set()
        super().__exit__(*exc)
