"""A ComfyUI server in a child process, driven over HTTP (used by the tests, the bench and run_workflow.py).

The server runs ComfyUI's own ``main.py`` in the Python that :func:`~sspir_core.host.install.comfyui_python`
names for its folder; this module never imports ComfyUI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .install import CHECKOUT, ComfyUIError, comfyui_dir, comfyui_python, read_version

PACK_NAME = "ComfyUI-SSPIR"
"""The pack's folder name in custom_nodes/: ComfyUI names the pack's templates category and URLs after it."""
PACK_DIR = CHECKOUT
"""The pack linked into the server's custom_nodes by default: the checkout this sspir_core sits in."""
_LOGGED_VERSION = re.compile(r"ComfyUI version: (\S+)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_extra_model_paths(path: Path, models_dir: Path, folders: tuple[str, ...]) -> None:
    """An extra_model_paths.yaml naming ``models_dir/<folder>`` for each model folder (JSON is YAML)."""
    entry = {"base_path": str(models_dir.resolve())} | {name: name for name in folders}
    path.write_text(json.dumps({"sspir_models": entry}, indent=2) + "\n")


# Model folders the pack reads (NODES-CONTRACT.md); `sspir` and `LLM` are registered by the pack.
MODEL_FOLDERS = ("checkpoints", "diffusers", "sspir", "clip_vision", "LLM")


class ComfyServer:
    """A ComfyUI server in a child process, on 127.0.0.1, with this pack in its custom_nodes/.

    Everything it writes (custom_nodes/, user/, input/, output/, temp/, the log) lives in
    ``work_dir`` (ComfyUI's ``--base-directory``), so the ComfyUI folder is never modified.
    """

    def __init__(
        self,
        work_dir: Path,
        models_dir: Path | None = None,
        comfy_dir: Path | None = None,
        pack_dir: Path = PACK_DIR,
        python: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        cpu: bool = True,
        env: dict[str, str] | None = None,
        expect_version: str | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.models_dir = models_dir
        self.comfy_dir = Path(comfy_dir or comfyui_dir())
        self.pack_dir = Path(pack_dir).resolve()
        self.python = python or comfyui_python(self.comfy_dir)
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.cpu = cpu  # False: ComfyUI's own device choice (the GPU), for `sspir bench --parts native --device cuda`
        self.env = dict(env or {})  # set for the server only (e.g. OMP_NUM_THREADS for a bench on shared cores)
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        self.log_path = self.work_dir / "comfyui.log"
        self.expect_version = expect_version  # None: the version file of comfy_dir (checked once it serves)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def input_dir(self) -> Path:
        return self.work_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    def _lay_out(self) -> list[str]:
        for sub in ("custom_nodes", "input", "output", "temp", "user/default"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.work_dir / "custom_nodes" / PACK_NAME
        if not link.exists():
            try:
                link.symlink_to(self.pack_dir, target_is_directory=True)
            except OSError:  # no symlinks (Windows without developer mode): copy the code
                shutil.copytree(self.pack_dir, link, ignore=shutil.ignore_patterns(".venv", ".git", "out"))
        # Skip the first-run templates dialog in the front end.
        settings = self.work_dir / "user" / "default" / "comfy.settings.json"
        if not settings.exists():
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        args = [
            *(["--cpu"] if self.cpu else []),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.work_dir),
            "--user-directory",
            str(self.work_dir / "user"),
            "--input-directory",
            str(self.input_dir),
            "--output-directory",
            str(self.output_dir),
            "--temp-directory",
            str(self.work_dir / "temp"),
            "--database-url",
            f"sqlite:///{self.work_dir / 'user' / 'comfyui.db'}",
            "--disable-auto-launch",
            "--disable-api-nodes",  # no cloud nodes, and the front end stays off the internet
        ]
        if self.models_dir is not None:
            yaml_path = self.work_dir / "extra_model_paths.yaml"
            write_extra_model_paths(yaml_path, Path(self.models_dir), MODEL_FOLDERS)
            args += ["--extra-model-paths-config", str(yaml_path)]
        return args

    def start(self, timeout: float = 180.0) -> ComfyServer:
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyUIError(f"no ComfyUI in {self.comfy_dir} (run: python -m sspir_core.host fetch)")
        if os.sep in self.python and not Path(self.python).is_file():
            raise ComfyUIError(
                f"no Python at {self.python} to run {self.comfy_dir}: prepare it first "
                "(python -m sspir_core.host fetch --version VERSION) or set COMFYUI_PYTHON"
            )
        if not (self.pack_dir / "__init__.py").is_file() or not (self.pack_dir / "nodes").is_dir():
            raise ComfyUIError(
                f"{self.pack_dir} is not the ComfyUI-SSPIR pack (no __init__.py and nodes/): pass "
                "pack_dir, the folder of a checkout of the pack"
            )
        args = self._lay_out()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        env.setdefault("DO_NOT_TRACK", "1")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [self.python, "main.py", *args, *self.extra_args],
            cwd=self.comfy_dir,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches us; we stop the server ourselves
        )
        try:
            self._wait_ready(timeout)
            self._check_version()
        except BaseException:  # Ctrl-C or an error while starting: never leave a server behind
            self.stop()
            raise
        return self

    def logged_version(self) -> str | None:
        """The version in this server's ``ComfyUI version: X`` log line (main.py writes it before serving)."""
        found = _LOGGED_VERSION.findall(self.log_tail(chars=1 << 20))
        return found[-1] if found else None  # the last start: the log file is appended to

    def _check_version(self) -> None:
        """The server that answered is the ComfyUI asked for: its log names ``expect_version`` (or the tree's)."""
        expected = self.expect_version or read_version(self.comfy_dir)
        if expected is None:  # a tree without comfyui_version.py: nothing to compare with
            return
        logged = self.logged_version()
        if logged != expected:
            raise ComfyUIError(
                f"the server in {self.comfy_dir} logged ComfyUI version {logged!r}, expected "
                f"{expected} (log {self.log_path})"
            )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyUIError(f"ComfyUI exited with code {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ComfyUIError):
                self.get("/system_stats", timeout=2)
                return
            time.sleep(0.3)
        raise ComfyUIError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: cancel a running prompt, then SIGINT (a clean exit), SIGTERM, SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, ComfyUIError):
                self.post("/interrupt", {}, timeout=2)
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
        if getattr(self, "_log_file", None) is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # HTTP ------------------------------------------------------------------------------------
    def _request(self, path: str, data: dict | None = None, timeout: float = 30.0):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": "application/json"} if body else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise ComfyUIError(f"{path}: HTTP {err.code}: {detail}") from err
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str, timeout: float = 30.0):
        return self._request(path, timeout=timeout)

    def post(self, path: str, data: dict, timeout: float = 30.0):
        return self._request(path, data=data, timeout=timeout)

    def object_info(self, node: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node}" if node else ""), timeout=60)

    def queue(self, prompt: dict) -> str:
        """POST an API-format prompt; a validation failure raises with ComfyUI's node errors."""
        try:
            reply = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except ComfyUIError as err:
            raise ComfyUIError(f"ComfyUI rejected the prompt: {_explain_rejection(str(err))}") from err
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """The history entry of a finished prompt (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id) if hist else None
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error") or entry.get("outputs"):
                    return entry
            if not self.alive():
                raise ComfyUIError(f"ComfyUI exited while running the prompt:\n{self.log_tail()}")
            time.sleep(0.2)
        raise ComfyUIError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue and wait; raise with the node's message when the prompt ends in an error."""
        entry = self.wait(self.queue(prompt), timeout)
        error = prompt_error(entry)
        if error:
            raise ComfyUIError(error)
        return entry

    def output_files(self, entry: dict, node_id: str | None = None, kind: str = "output") -> list[Path]:
        """Files a finished prompt wrote (``kind`` "output" for SaveImage, "temp" for previews)."""
        base = {"output": self.output_dir, "temp": self.work_dir / "temp", "input": self.input_dir}[kind]
        files = []
        for nid, out in entry.get("outputs", {}).items():
            if node_id is not None and nid != node_id:
                continue
            for img in out.get("images", []):
                if img.get("type") == kind:
                    files.append(base / img.get("subfolder", "") / img["filename"])
        return files


def prompt_error(entry: dict) -> str | None:
    """The error message of a history entry, naming the node; None when it succeeded."""
    status = entry.get("status", {})
    if status.get("status_str") != "error":
        return None
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}"
            )
        if kind == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return "the prompt failed without an error message (see the ComfyUI log)"


def _explain_rejection(text: str) -> str:
    """Turn a /prompt 400 reply into one readable message per failing node."""
    try:
        body = json.loads(text.split(": ", 2)[-1])
    except (ValueError, IndexError):
        return text
    parts = [body.get("error", {}).get("message", "")]
    for node_id, info in (body.get("node_errors") or {}).items():
        for err in info.get("errors", []):
            parts.append(f"node {node_id} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
    return "; ".join(p for p in parts if p) or text
