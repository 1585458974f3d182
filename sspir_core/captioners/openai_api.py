"""Any OpenAI-compatible chat-completions server (Ollama, LM Studio, vLLM, llama.cpp server).

Standard library only. The image goes inline as a base64 PNG data URL; the only origin contacted is the
URL the user configured: a redirect elsewhere is refused, so neither the API key nor the image leaves it,
and no other host's answer becomes a caption. Each caption has a total deadline besides the socket
timeout (a server that trickles bytes cannot hold a batch forever).

While the caller's cancel check is set (ComfyUI's Cancel), a request runs in a worker thread and the check is
polled every 0.1 s: a cancel closes the connection (servers such as Ollama then stop generating) and raises
the check's exception at once, with no retry after it.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, ClassVar

from PIL import Image

from ..errors import InputError
from .base import PAPER_DECODING, PAPER_PROMPT, Captioner, CaptionerError

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a caption answer is a few kB; more is not a chat completion
_CANCEL_POLL_S = 0.1  # how often a waiting request calls the cancel check


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the configured origin (scheme, host, port)."""

    def __init__(self, origin: tuple[str, str, int | None]) -> None:
        self.origin = origin

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if _origin(newurl) != self.origin:
            raise CaptionerError(
                f"the server at {req.full_url} redirected to {newurl}, another host: refused, so the API key "
                "and the image are sent only where you pointed (--url). If that host is the right server, "
                "give its URL instead."
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _tracked(http_class: type[http.client.HTTPConnection], req: urllib.request.Request) -> type:
    """``http_class`` that appends each socket it opens to ``req.sockets`` (when the request has that list)."""
    sockets = getattr(req, "sockets", None)
    if sockets is None:
        return http_class

    class Tracked(http_class):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            sockets.append(self.sock)

    return Tracked


class _TrackedHTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **kw):  # type: ignore[no-untyped-def, override]
        return super().do_open(_tracked(http_class, req), req, **kw)


class _TrackedHTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **kw):  # type: ignore[no-untyped-def, override]
        return super().do_open(_tracked(http_class, req), req, **kw)


def _failure_kind(exc: BaseException) -> str:
    """``refused``, ``connect-timeout`` (no TCP answer), ``no-answer`` (connected, then silence) or ``other``."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ConnectionRefusedError) or isinstance(reason, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, urllib.error.URLError) and isinstance(reason, TimeoutError):
        return "connect-timeout"  # urllib wraps errors of the connect and the send in URLError
    if isinstance(exc, TimeoutError):
        return "no-answer"  # raised while waiting for the status line or the body
    return "other"


def chat_completions_url(url: str) -> str:
    """Accept a server root, an API base (``.../v1``) or the full endpoint; return the endpoint."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"not an http(s) URL: {url!r} (e.g. http://127.0.0.1:11434/v1 for Ollama)")
    path = parsed.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path or "/v1") + "/chat/completions"
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))


def image_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAICaptioner(Captioner):
    """Captions from a vision model served behind ``POST {base}/chat/completions``.

    Connection errors, timeouts and 408/429/5xx answers are retried ``retries`` times with exponential
    backoff; other HTTP errors fail at once with the server's message.
    """

    name: ClassVar[str] = "openai"
    default_prompt: ClassVar[str | None] = PAPER_PROMPT

    def __init__(
        self,
        url: str,
        *,
        model_name: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        max_new_tokens: int = PAPER_DECODING["max_new_tokens"],
        temperature: float = PAPER_DECODING["temperature"],
        top_p: float = PAPER_DECODING["top_p"],
        timeout: float = 120.0,
        deadline: float = 300.0,
        retries: int = 2,
        backoff: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not url:
            raise InputError("the openai captioner needs the server URL, e.g. http://127.0.0.1:11434/v1")
        self.endpoint = chat_completions_url(url)
        self.base_url = self.endpoint[: -len("/chat/completions")]
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise InputError(f"environment variable {api_key_env} (the API key) is not set or empty")
        self._api_key = api_key
        self.model_name = model_name
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        if not (self.timeout > 0 and self.deadline > 0):
            raise InputError(f"timeout and deadline must be positive seconds, got {timeout} and {deadline}")
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        host = urllib.parse.urlsplit(self.endpoint).hostname or ""
        # Loopback servers are reached directly, even when a proxy is set in the environment.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        handlers += [_SameOriginRedirects(_origin(self.endpoint)), _TrackedHTTPHandler(), _TrackedHTTPSHandler()]
        self._opener = urllib.request.build_opener(*handlers)
        self._server_model: str | None = None  # the server's only model, asked once when none is named

    def identity(self) -> dict[str, Any]:
        """The cache key's captioner part; it needs no network, so cached captions work with the server down.

        Without a configured model name the key stands for "this URL's only model": name the model
        (``model_name``, CLI ``--model-name``) to keep captions of different models apart.
        """
        return {
            **super().identity(),
            "url": self.endpoint,
            "model": self.model_name,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    # -- HTTP ---------------------------------------------------------------------------------------
    def _read(self, resp: Any, deadline_at: float) -> bytes:
        """The whole answer, checking the deadline between reads (each read waits at most the socket timeout)."""
        chunks, size = [], 0
        while chunk := resp.read1(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_ANSWER_BYTES:
                raise CaptionerError(f"the answer from {resp.geturl()} is larger than {_MAX_ANSWER_BYTES} bytes")
            if time.monotonic() > deadline_at:
                raise TimeoutError("the answer did not arrive within the deadline")
        return b"".join(chunks)

    def _sleep(self, seconds: float) -> None:
        """Wait between retries, calling the cancel check meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.check is not None:
                self.check()
            time.sleep(min(left, _CANCEL_POLL_S))

    def _fetch(self, request: urllib.request.Request, timeout: float, deadline_at: float) -> bytes:
        with self._opener.open(request, timeout=timeout) as resp:
            return self._read(resp, deadline_at)

    def _fetch_cancellable(self, request: urllib.request.Request, timeout: float, deadline_at: float) -> bytes:
        """:meth:`_fetch` in a worker thread while this thread polls the cancel check; a cancel shuts the
        connection down (the worker then ends at once) and raises the check's exception."""
        check = self.check
        if check is None:
            return self._fetch(request, timeout, deadline_at)
        request.sockets = []  # type: ignore[attr-defined]  (filled by _tracked)
        result: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                result["payload"] = self._fetch(request, timeout, deadline_at)
            except BaseException as exc:  # handed to the waiting thread
                result["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name="sspir-openai-request", daemon=True).start()
        while not done.wait(_CANCEL_POLL_S):
            try:
                check()
            except BaseException:
                for sock in request.sockets:  # type: ignore[attr-defined]
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                raise
        if "error" in result:
            raise result["error"]
        return result["payload"]

    def _request(self, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        deadline_at = time.monotonic() + self.deadline
        last_error, last_kind, last_timeout = "", "other", self.timeout
        tries, out_of_time = 0, False
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(max(0.0, min(self.backoff * 2 ** (attempt - 1), 30.0, deadline_at - time.monotonic())))
            if self.check is not None:
                self.check()
            remaining = deadline_at - time.monotonic()
            if remaining <= 0:
                out_of_time = True
                break
            tries += 1
            last_timeout = min(self.timeout, remaining)
            request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
            try:
                payload = self._fetch_cancellable(request, last_timeout, deadline_at)
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:500].decode("utf-8", "replace").strip()
                last_error, last_kind = f"HTTP {exc.code} {exc.reason}: {detail}", "http"
                if exc.code in _RETRY_STATUS:
                    continue
                raise CaptionerError(f"the captioning server at {url} refused the request ({last_error})") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last_error, last_kind = str(getattr(exc, "reason", exc)), _failure_kind(exc)
                out_of_time = time.monotonic() >= deadline_at
                continue
            try:
                return json.loads(payload)
            except ValueError as exc:
                raise CaptionerError(f"the server at {url} did not answer with JSON: {payload[:200]!r}") from exc
        raise CaptionerError(self._failure_message(url, tries, last_kind, last_error, last_timeout, out_of_time))

    def _failure_message(self, url: str, tries: int, kind: str, error: str, timeout: float, out_of_time: bool) -> str:
        """Says which failure it was: nothing listening, no answer to the connection, or connected and then
        no answer (a busy server is reachable: the advice differs)."""
        after = f"after {tries} {'try' if tries == 1 else 'tries'}"
        if out_of_time:
            after += f" in the deadline of {self.deadline:g} s"
        if kind == "no-answer":
            waited = "no complete answer" if out_of_time else f"no answer within {timeout:g} s"
            return (
                f"the captioning server at {url} accepted the connection but sent {waited} ({after}): it "
                "is reachable, but busy or slow (still loading the model, or a large model on a slow machine). "
                "Try again once it is ready, or allow more time (timeout/deadline; CLI: --timeout, --deadline)."
            )
        check = (
            "Check that the server (Ollama, LM Studio, vLLM, llama.cpp server) is running and listening there, "
            "that the URL includes the API prefix (usually /v1, e.g. http://127.0.0.1:11434/v1), and that "
            "a vision model is loaded."
        )
        if kind == "refused":
            return f"nothing accepts connections at {url} (connection refused, {after}). {check}"
        if kind == "connect-timeout":
            return (
                f"could not connect to {url} within {timeout:g} s, {after} (no answer to the connection: a "
                f"wrong host, or a firewall). {check}"
            )
        return f"could not reach the captioning server at {url} {after} ({error}). {check}"

    def resolved_model_name(self) -> str:
        """The configured model name, or the server's only model (``GET /models``)."""
        if self.model_name:
            return self.model_name
        if self._server_model:
            return self._server_model
        listing = self._request(self.base_url + "/models", None)
        ids = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict) and m.get("id")]
        if len(ids) != 1:
            found = ", ".join(ids) if ids else "none"
            raise InputError(
                f"the server at {self.base_url} offers {len(ids)} models ({found}): name one with model_name "
                "(CLI: --model-name)"
            )
        self._server_model = ids[0]
        return self._server_model

    def request_body(self, image: Image.Image) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.resolved_model_name(),
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.prompt},
                        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    ],
                }
            ],
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stream": False,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def _caption_one(self, image: Image.Image) -> str:
        answer = self._request(self.endpoint, self.request_body(image))
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise CaptionerError(f"unexpected answer from {self.endpoint}: {str(answer)[:300]}") from exc
        if isinstance(content, list):  # some servers answer with content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise CaptionerError(f"unexpected message content from {self.endpoint}: {content!r:.300}")
        return content
