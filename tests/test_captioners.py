"""Captioners: tiny real-layout models, the OpenAI-compatible backend against a local server, the cache."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sspir_core.captioners import (  # noqa: E402
    CAPTIONERS,
    PAPER_PROMPT,
    CaptionerError,
    LlavaCaptioner,
    clean_caption,
    default_cache_dir,
    get_captioner,
    join_captions,
    normalize_captions,
    openai_api,
    select_caption,
    to_pil_images,
)
from sspir_core.captioners.llava import LLAVA15_TEMPLATE  # noqa: E402
from sspir_core.captioners.openai_api import chat_completions_url  # noqa: E402
from sspir_core.errors import CheckpointError, InputError, SSPIRError  # noqa: E402
from tests.tiny_captioners import (  # noqa: E402
    ChatServer,
    LocalServer,
    SilentServer,
    build_blip,
    build_llava,
    build_qwen_vl,
)
from tests.waiting import HANG_GUARD_S, call_in_thread  # noqa: E402

LEAKY = ("</s>", "<s>", "<|im_end|>", "<|endoftext|>", "<image>", "<|image_pad|>", "[SEP]", "[DEC]", "\n")


def assert_clean(caption: object) -> None:
    assert isinstance(caption, str) and caption
    assert caption == caption.strip() and "  " not in caption
    for token in LEAKY:
        assert token not in caption, (token, caption)


def _image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioners")
    return {
        "llava": build_llava(root / "llava-1.5-7b-hf"),
        "llava_plain": build_llava(root / "llava-no-template", chat_template=False),
        "qwen2": build_qwen_vl(root / "Qwen2-VL-2B-Instruct", version="2"),
        "qwen25": build_qwen_vl(root / "Qwen2.5-VL-3B-Instruct", version="2.5"),
        "blip": build_blip(root / "blip-image-captioning-large"),
    }


# -- text hygiene and the str / list contract -------------------------------------------------------
def test_clean_caption_strips_special_tokens_and_newlines():
    raw = "<s> A red\n\ncar</s> parked <|im_end|>\t on a  street.<|endoftext|>\x16\ufffd "
    assert clean_caption(raw) == "A red car parked on a street."
    with pytest.raises(InputError):
        clean_caption(["a list"])  # type: ignore[arg-type]


def test_caption_list_helpers():
    assert normalize_captions("a\ncat", 3) == ["a cat"] * 3
    assert normalize_captions(["x", "y"], 2) == ["x", "y"]
    assert normalize_captions(["only"], 2) == ["only", "only"]
    with pytest.raises(InputError, match="2 captions for 3 images"):
        normalize_captions(["x", "y"], 3)
    assert select_caption(["a", "b"], 1) == "b" and select_caption(["a"], 5) == "a"
    with pytest.raises(InputError):
        select_caption(["a", "b"], 2)
    assert join_captions(["a", "", "b"], " | ") == "a | b"


# -- image inputs -----------------------------------------------------------------------------------
def test_images_from_tensors_arrays_and_odd_modes():
    bhwc = torch.rand(2, 12, 20, 3)  # ComfyUI IMAGE
    pils = to_pil_images(bhwc)
    assert len(pils) == 2 and all(p.mode == "RGB" and p.size == (20, 12) for p in pils)
    assert np.abs(np.asarray(pils[1]) / 255.0 - bhwc[1].numpy()).max() < 1 / 255 + 1e-6
    assert [p.size for p in to_pil_images(torch.rand(3, 3, 12, 20))] == [(20, 12)] * 3
    assert to_pil_images(np.zeros((8, 9, 4), np.uint8))[0].size == (9, 8)

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent -> white, not hidden colour
    assert to_pil_images(rgba)[0].getpixel((0, 0)) == (255, 255, 255)
    i16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert to_pil_images(i16)[0].getpixel((1, 1)) == (255, 255, 255)
    pal = Image.new("L", (4, 4), 128).convert("P")
    out = to_pil_images([pal, Image.new("L", (4, 4), 7), Image.new("F", (4, 4), 0.5)])
    assert [o.mode for o in out] == ["RGB"] * 3 and out[1].getpixel((0, 0)) == (7, 7, 7)
    assert out[2].getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(InputError, match="shape"):
        to_pil_images(np.zeros((2, 5, 6, 7)))
    with pytest.raises(InputError):
        to_pil_images("image.png")


# -- cancelling --------------------------------------------------------------------------------------
class Cancelled(Exception):
    pass


def test_cancel_stops_inside_a_caption_and_keeps_the_finished_ones(models, tmp_path):
    """``check`` runs after every generated token; captions finished before the cancel stay in the cache."""
    cap = get_captioner(
        "llava",
        model_dir=models["llava"],
        cache_dir=tmp_path,
        max_new_tokens=12,
        generate_kwargs={"min_new_tokens": 12},
    )
    calls = []

    def check() -> None:
        calls.append(len(calls))
        if len(calls) == 1 + 12 + 1 + 3:  # image 1: before it and 12 tokens; image 2: before it, 3 tokens
            raise Cancelled

    with pytest.raises(Cancelled):
        cap.caption([_image(0), _image(1)], check=check)
    assert len(calls) == 17 and cap.check is None  # stopped inside image 2, after its third token
    first_calls = cap.model_calls
    again = cap.caption([_image(0)])  # image 1 was finished before the cancel: from the cache
    assert cap.model_calls == first_calls and len(again) == 1 and again[0]


# -- LLaVA ------------------------------------------------------------------------------------------
def test_llava_paper_defaults_and_prompt_formats(models):
    cap = get_captioner("llava", model_dir=models["llava"], cache_dir=None, device="cpu")
    assert cap.prompt == PAPER_PROMPT
    assert cap.decoding == {"do_sample": True, "temperature": 0.2, "top_p": 0.7, "max_new_tokens": 512}
    cap._ensure_loaded()
    templated = cap.build_prompt()
    assert templated.startswith("USER: <image>\n" + PAPER_PROMPT) and templated.rstrip().endswith("ASSISTANT:")

    plain = LlavaCaptioner(models["llava_plain"], cache_dir=None)
    plain._ensure_loaded()
    assert not plain.processor.chat_template
    assert plain.build_prompt() == LLAVA15_TEMPLATE.format(prompt=PAPER_PROMPT)


def test_llava_batch_gives_one_clean_caption_per_image(models):
    cap = get_captioner(
        "llava", model_dir=models["llava"], cache_dir=None, max_new_tokens=10, generate_kwargs={"min_new_tokens": 4}
    )
    batch = torch.stack([torch.from_numpy(np.asarray(_image(i), np.float32) / 255) for i in range(3)])
    captions = cap.caption(batch)
    assert isinstance(captions, list) and len(captions) == 3
    for c in captions:
        assert_clean(c)
    assert cap.caption(_image(0)) == captions[:1]  # a single image is a one-element list
    plain = get_captioner(
        "llava",
        model_dir=models["llava_plain"],
        cache_dir=None,
        max_new_tokens=10,
        generate_kwargs={"min_new_tokens": 4},
    )
    assert_clean(plain.caption(_image(5))[0])


def test_same_seed_same_caption_and_global_rng_untouched(models):
    img = _image(1)

    def run(seed):
        return get_captioner(
            "llava",
            model_dir=models["llava"],
            cache_dir=None,
            seed=seed,
            max_new_tokens=12,
            generate_kwargs={"min_new_tokens": 6},
        ).caption(img)[0]

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = run(7)
    assert torch.equal(torch.rand(3), expected_next)  # sampling did not consume the caller's RNG
    assert run(7) == first
    assert len({run(s) for s in range(4)}) > 1  # the seed does reach the sampler


def test_unload_after_use_frees_the_model(models):
    cap = get_captioner("llava", model_dir=models["llava"], cache_dir=None, keep_loaded=False, max_new_tokens=4)
    cap.caption(_image(2))
    assert cap.model is None and cap.processor is None
    kept = get_captioner("llava", model_dir=models["llava"], cache_dir=None, max_new_tokens=4)
    kept.caption(_image(2))
    assert kept.model is not None


# -- Qwen-VL and BLIP -------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["qwen2", "qwen25"])
def test_qwen_vl_batches_and_large_images(models, key):
    cap = get_captioner(
        "qwen2-vl",
        model_dir=models[key],
        cache_dir=None,
        max_new_tokens=8,
        generate_kwargs={"min_new_tokens": 4},
        max_pixels=112 * 112,
    )
    captions = cap.caption([_image(3), _image(4, size=(300, 200)), Image.new("RGBA", (60, 60))])
    assert len(captions) == 3
    for c in captions:
        assert_clean(c)
    assert "degradation" in cap.prompt


def test_blip_continues_the_prefix(models):
    cap = get_captioner(
        "blip",
        model_dir=models["blip"],
        cache_dir=None,
        prompt="a detailed photo of",
        max_new_tokens=6,
        generate_kwargs={"min_new_tokens": 2},
    )
    captions = cap.caption(np.stack([np.asarray(_image(i)) for i in range(2)]))
    assert len(captions) == 2
    for c in captions:
        assert_clean(c)
        assert c.startswith("a detailed photo of ") and len(c) > len("a detailed photo of ")


# -- cache ------------------------------------------------------------------------------------------
def test_cache_avoids_running_the_model_twice(models, tmp_path):
    opts = {"model_dir": models["llava"], "cache_dir": tmp_path / "cache", "max_new_tokens": 6}
    a, b = _image(10), _image(11)
    first = get_captioner("llava", **opts)
    captions = first.caption([a, b, a])
    assert first.model_calls == 2 and captions[0] == captions[2]
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2

    second = get_captioner("llava", **opts)
    assert second.caption([b, a]) == [captions[1], captions[0]]
    assert second.model_calls == 0 and second.model is None  # not even loaded
    assert second.cache.hits == 2

    other_prompt = get_captioner("llava", prompt="Describe it.", **opts)
    other_prompt.caption(a)
    assert other_prompt.model_calls == 1
    other_seed = get_captioner("llava", seed=1, **opts)
    other_seed.caption(a)
    assert other_seed.model_calls == 1
    # Same pixels in another mode/container is the same image: a ComfyUI tensor hits the cache.
    tensor = torch.from_numpy(np.asarray(a, np.float32) / 255)[None]
    third = get_captioner("llava", **opts)
    assert third.caption(tensor) == [captions[0]] and third.model_calls == 0


def test_cache_key_follows_the_model_files(models, tmp_path):
    import shutil

    folder = shutil.copytree(models["blip"], tmp_path / "blip")
    opts = {"model_dir": folder, "cache_dir": tmp_path / "cache", "max_new_tokens": 3}
    get_captioner("blip", **opts).caption(_image(0))
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    again = get_captioner("blip", **opts)
    again.caption(_image(0))
    assert again.model_calls == 1


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SSPIR_CACHE_DIR", str(tmp_path / "s"))
    assert default_cache_dir() == tmp_path / "s" / "captions"
    monkeypatch.delenv("SSPIR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "sspir" / "captions"


# -- typed text -------------------------------------------------------------------------------------
def test_text_captioner():
    imgs = torch.rand(3, 8, 8, 3)
    assert get_captioner("text", text="a cat\non a mat").caption(imgs) == ["a cat on a mat"] * 3
    assert get_captioner("text", text=["a", "b", "c"]).caption(imgs) == ["a", "b", "c"]
    with pytest.raises(InputError):
        get_captioner("text", text=["a", "b"]).caption(imgs)


# -- error paths ------------------------------------------------------------------------------------
def test_registry_and_missing_folders(tmp_path, models):
    assert set(CAPTIONERS) == {"llava", "qwen2-vl", "florence2", "blip", "openai", "text"}
    with pytest.raises(InputError, match="unknown captioner"):
        get_captioner("gpt-9")
    with pytest.raises(InputError, match="bad options"):
        get_captioner("text", model_dir="x")
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="llava-hf/llava-1.5-7b-hf") as err:
        get_captioner("llava", model_dir=missing)
    assert str(missing) in str(err.value)
    with pytest.raises(CheckpointError, match="config.json"):
        get_captioner("qwen2-vl", model_dir=tmp_path)
    wrong = get_captioner("llava", model_dir=models["blip"], cache_dir=None)
    with pytest.raises(CheckpointError, match="not a transformers LLaVA"):
        wrong.caption(_image(0))
    with pytest.raises(InputError, match="dtype"):
        get_captioner("blip", model_dir=models["blip"], dtype="int3")


def _florence_folder(path, vision_type):
    path.mkdir()
    config = {"model_type": "florence2", "vision_config": {"model_type": vision_type}}
    if vision_type == "davit":
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_florence2_remote_code_is_refused_unless_asked(tmp_path):
    original = _florence_folder(tmp_path / "Florence-2-large", "davit")
    with pytest.raises(CheckpointError, match="trust_remote_code=True"):
        get_captioner("florence2", model_dir=original)
    allowed = get_captioner("florence2", model_dir=original, trust_remote_code=True, cache_dir=None)
    assert allowed.remote_code and allowed.prompt == "<MORE_DETAILED_CAPTION>"
    native = get_captioner("florence2", model_dir=_florence_folder(tmp_path / "native", "florence_vision"))
    assert not native.remote_code and not native.trust_remote_code
    with pytest.raises(InputError, match="caption task"):
        get_captioner("florence2", model_dir=tmp_path / "native", prompt="Describe it")


# -- OpenAI-compatible server -----------------------------------------------------------------------
def test_openai_request_carries_prompt_and_image(monkeypatch):
    monkeypatch.setenv("TINY_KEY", "sk-test")
    with ChatServer() as srv:
        cap = get_captioner("openai", url=srv.url, api_key_env="TINY_KEY", cache_dir=None, seed=3, timeout=5)
        captions = cap.caption([_image(0, size=(17, 9)), _image(1)])
    assert captions == ["A cat sitting", "A cat sitting"]
    assert srv.requests[0]["method"] == "GET" and srv.requests[0]["path"] == "/v1/models"
    post = srv.requests[1]
    assert post["path"] == "/v1/chat/completions" and post["auth"] == "Bearer sk-test"
    body = post["body"]
    assert body["model"] == "tiny-vlm" and body["seed"] == 3 and body["temperature"] == 0.2
    parts = body["messages"][0]["content"]
    assert {"type": "text", "text": PAPER_PROMPT} in parts
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (17, 9)


def test_openai_retries_then_succeeds_and_gives_up():
    with ChatServer(fail_first=2) as srv:
        cap = get_captioner("openai", url=srv.url, model_name="m", retries=2, backoff=0.01, cache_dir=None)
        assert cap.caption(_image(0)) == ["A cat sitting"]
        assert len(srv.requests) == 3
    with ChatServer(fail_first=10) as srv:
        cap = get_captioner("openai", url=srv.url, model_name="m", retries=1, backoff=0.01, cache_dir=None)
        with pytest.raises(CaptionerError, match="after 2 tries"):
            cap.caption(_image(0))
        assert len(srv.requests) == 2
    with ChatServer(fail_first=10, fail_status=400) as srv:  # a client error is not retried
        cap = get_captioner("openai", url=srv.url, model_name="m", retries=3, backoff=0.01, cache_dir=None)
        with pytest.raises(CaptionerError, match="HTTP 400"):
            cap.caption(_image(0))
        assert len(srv.requests) == 1


class FakeClock:
    """Stands in for the ``time`` module inside ``openai_api``: ``monotonic`` reads a counter that the test (or a
    fake server) advances, and ``sleep`` records the wait and advances the counter instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.looked = threading.Event()  # set whenever the captioner reads the clock

    def monotonic(self) -> float:
        self.looked.set()
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(openai_api, "time", fake)
    return fake


def test_openai_unreachable_error_is_clear_and_waits_only_the_backoff(clock):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/v1"
    cap = get_captioner("openai", url=url, model_name="m", retries=1, backoff=0.01, timeout=2, cache_dir=None)
    with pytest.raises(SSPIRError) as err:
        cap.caption(_image(0))
    msg = str(err.value)
    assert f"{url}/chat/completions" in msg and "is running" in msg and "/v1" in msg
    assert "connection refused" in msg and "after 2 tries" in msg and "accepted" not in msg
    assert clock.slept == [0.01]  # the one backoff between the two tries, nothing else waited on


def test_openai_timeout_ends_the_wait_for_a_late_answer():
    """The server answers only after the client has given up: the 0.2 s socket timeout ends the wait (if it did
    not, the answer would come at the server's hang guard and the caption would succeed)."""
    with ChatServer(hold=True) as srv:
        cap = get_captioner("openai", url=srv.url, model_name="m", retries=0, timeout=0.2, cache_dir=None)
        with pytest.raises(CaptionerError, match="after 1 try") as err:
            cap.caption(_image(0))
        srv.answer_now.set()  # the late answer finds the connection gone
    assert "accepted the connection but sent no answer within 0.2 s" in str(err.value), err.value
    assert len(srv.requests) == 1


def test_openai_server_that_accepts_and_never_answers_is_told_from_one_that_refuses():
    """It was reachable: the message says it accepted the connection and gave no answer within the timeout."""
    with SilentServer() as srv:
        cap = get_captioner("openai", url=srv.url, model_name="m", retries=1, backoff=0.01, timeout=0.3, cache_dir=None)
        with pytest.raises(CaptionerError) as err:
            cap.caption(_image(0))
        assert srv.requests == 2
    msg = str(err.value)
    assert "accepted the connection but sent no answer within 0.3 s (after 2 tries)" in msg, msg
    assert "refused" not in msg and "could not reach" not in msg


class _Cancelled(Exception):
    """Stands in for ComfyUI's InterruptProcessingException."""


def _join_request_workers() -> None:
    """Wait for the captioner's request threads to end: after that nothing of a caption can send a request."""
    for thread in threading.enumerate():
        if thread.name == "sspir-openai-request":
            thread.join(HANG_GUARD_S)
            assert not thread.is_alive(), "a request thread outlived its caption"


def test_openai_cancel_while_the_server_never_answers_stops_at_that_poll_and_hangs_up():
    """Cancel pressed while a request waits on a server that never answers (timeout 600 s): the check is polled
    during the wait, and the poll that raises ends the caption with the check's own exception (an interruption,
    not a captioner error), with no check after it, the connection closed, and no retry."""
    with SilentServer() as srv:
        cap = get_captioner("openai", url=srv.url, model_name="m", retries=2, backoff=0.01, timeout=600, cache_dir=None)
        polls = {"waiting": 0, "after cancel": 0}

        def check():
            if polls["waiting"] == 3:
                polls["after cancel"] += 1
            elif srv.requests:  # the server holds the request
                polls["waiting"] += 1
                if polls["waiting"] == 3:  # Cancel pressed at the third poll of the wait
                    raise _Cancelled

        with pytest.raises(_Cancelled):
            call_in_thread(lambda: cap.caption(_image(0), check=check), "a cancelled caption")
        assert polls == {"waiting": 3, "after cancel": 0}
        assert srv.hung_up.wait(HANG_GUARD_S), "the connection was left open"
        _join_request_workers()
        assert srv.requests == 1  # no second request after Cancel


def test_openai_url_forms_and_cache(tmp_path):
    assert chat_completions_url("http://h:11434") == "http://h:11434/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/api/v1/chat/completions") == "https://h/api/v1/chat/completions"
    with pytest.raises(InputError):
        chat_completions_url("ftp://h/v1")
    with ChatServer() as srv:
        opts = {"url": srv.url, "model_name": "m", "cache_dir": tmp_path}
        get_captioner("openai", **opts).caption(_image(0))
        again = get_captioner("openai", **opts)
        assert again.caption(_image(0)) == ["A cat sitting"] and again.model_calls == 0
        assert len(srv.requests) == 1


class _Redirector(LocalServer):
    """Answers every request with a redirect to ``target`` (another origin)."""

    def __init__(self, target: str, status: int = 302):
        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _redirect(self):
                self.send_response(status)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _redirect

        self.serve(Handler)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("named", [True, False])
def test_openai_refuses_redirects_to_another_origin_and_sends_it_nothing(monkeypatch, status, named):
    monkeypatch.setenv("TINY_KEY", "sk-secret")
    with ChatServer(answer="an attacker's caption") as evil:
        with _Redirector(evil.url + "/chat/completions", status) as hop:
            cap = get_captioner(
                "openai",
                url=hop.url,
                api_key_env="TINY_KEY",
                cache_dir=None,
                retries=0,
                model_name="m" if named else None,
            )
            with pytest.raises(CaptionerError, match="another host: refused"):
                cap.caption(_image(0))
        assert evil.requests == []  # neither the key nor the image reached it


def test_openai_total_deadline_stops_a_trickling_server(clock, monkeypatch):
    """A server that sends an answer announced as 100000 bytes one byte at a time, each byte 1/16 s later on the
    fake clock (far inside the 5 s socket timeout), is stopped by the 1 s deadline: by hand, 16 bytes take the
    clock to exactly 1 s, the 17th past it, and the captioner stops reading there, without a retry."""
    import http.client
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    done = threading.Event()
    received: list[int] = []  # the bytes of each read the captioner made (the standard library's read1)
    real_read1 = http.client.HTTPResponse.read1

    def read1(self, n=-1):
        data = real_read1(self, n)
        received.append(len(data))
        return data

    monkeypatch.setattr(http.client.HTTPResponse, "read1", read1)

    class Trickle(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.flush()
            try:
                for _ in range(1000):  # the client must stop long before; 1000 bytes end it either way
                    clock.looked.clear()
                    clock.now += 1 / 16  # before the byte leaves, so the read that gets it sees its time
                    self.wfile.write(b" ")  # 1/16 is exact in binary: no rounding in the count
                    self.wfile.flush()
                    # the next byte once the client has read the clock (after its read of this one)
                    if not clock.looked.wait(HANG_GUARD_S) or done.is_set():
                        return
            except OSError:
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        cap = get_captioner("openai", url=url, model_name="m", cache_dir=None, retries=3, timeout=5, deadline=1.0)
        with pytest.raises(CaptionerError, match="after 1 try in the deadline of 1 s") as err:
            cap.caption(_image(0))
        assert "sent no complete answer" in str(err.value), err.value
        assert sum(received) == 17, received
    finally:
        done.set()
        clock.looked.set()
        httpd.shutdown()
        httpd.server_close()


def test_openai_cache_hit_needs_no_server_even_without_a_model_name(tmp_path):
    with ChatServer() as srv:
        first = get_captioner("openai", url=srv.url, cache_dir=tmp_path, retries=0)
        assert first.caption(_image(0)) == ["A cat sitting"]
        assert first.caption(_image(0)) == ["A cat sitting"] and first.model_calls == 1  # same key after asking
    # the server is gone now
    again = get_captioner("openai", url=srv.url, cache_dir=tmp_path, retries=0, timeout=1)
    assert again.caption(_image(0)) == ["A cat sitting"] and again.model_calls == 0
