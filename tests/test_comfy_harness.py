"""The real-ComfyUI harness's pure parts (sspir_core.host, scripts/run_workflow.py), without a server."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from sspir_core import host as comfyui
from sspir_core.host import install as host_install  # noqa: F401 (comfyui.install below)
from sspir_core.host import server as host_server
from tests.conftest import REPO


def _script(name: str):
    """A script of scripts/ as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_workflow = _script("run_workflow")


def test_requirements_drop_only_the_torch_build(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "comfyui-frontend-package==1.32.9\ntorch\ntorchsde\ntorchvision\ntorchaudio\n"
        "numpy>=1.25.0\n\n#non essential dependencies:\nkornia>=0.7.1  # comment\n"
    )
    assert comfyui.requirements(tmp_path) == [
        "comfyui-frontend-package==1.32.9",
        "torchsde",
        "numpy>=1.25.0",
        "kornia>=0.7.1",
        "requests",
    ]


def test_missing_requirements_checks_names_and_exact_pins(tmp_path):
    import pytest as installed  # a package this interpreter surely has

    (tmp_path / "requirements.txt").write_text(
        f"pytest=={installed.__version__}\npytest==0.0.1\nno-such-package-sspir>=1\n"
    )
    missing = comfyui.missing_requirements(tmp_path, sys.executable)
    assert missing == ["pytest==0.0.1", "no-such-package-sspir>=1"] + ([] if _has("requests") else ["requests"])


def _has(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_extra_model_paths_is_yaml_naming_each_folder(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "extra_model_paths.yaml"
    comfyui.write_extra_model_paths(path, tmp_path / "my models", ("checkpoints", "LLM"))
    assert yaml.safe_load(path.read_text()) == {
        "sspir_models": {
            "base_path": str((tmp_path / "my models").resolve()),
            "checkpoints": "checkpoints",
            "LLM": "LLM",
        }
    }


def test_prompt_error_names_the_node_and_message():
    entry = {
        "status": {
            "status_str": "error",
            "messages": [
                ["execution_start", {}],
                [
                    "execution_error",
                    {
                        "node_id": "2",
                        "node_type": "SSPIRModelLoader",
                        "exception_type": "InputError",
                        "exception_message": "sspir_weights: 'x.safetensors' was not found\n",
                    },
                ],
            ],
        }
    }
    assert comfyui.prompt_error(entry) == (
        "node 2 (SSPIRModelLoader) failed: InputError: sspir_weights: 'x.safetensors' was not found"
    )
    assert comfyui.prompt_error({"status": {"status_str": "success", "messages": []}}) is None


def test_rejected_prompt_lists_each_node_error():
    body = {
        "error": {"message": "Prompt outputs failed validation"},
        "node_errors": {
            "5": {"class_type": "SaveImage", "errors": [{"message": "Required input is missing", "details": "images"}]}
        },
    }
    text = host_server._explain_rejection("/prompt: HTTP 400: " + json.dumps(body))
    assert text == "Prompt outputs failed validation; node 5 (SaveImage): Required input is missing: images"


def test_run_workflow_refuses_a_ui_workflow_and_names_its_api_twin(tmp_path):
    (tmp_path / "api").mkdir()
    ui = tmp_path / "wf.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    (tmp_path / "api" / "wf.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"UI-format.*api/wf\.json"):
        run_workflow.load_api_workflow(ui)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(SystemExit, match="not an API-format"):
        run_workflow.load_api_workflow(bad)


def test_run_workflow_points_every_loadimage_at_the_input():
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }
    assert run_workflow.set_input_image(prompt, "photo.png") == 1
    assert prompt["1"]["inputs"]["image"] == "photo.png" and prompt["2"]["inputs"] == {"images": ["1", 0]}


def test_user_comfyui_dir_without_main_py_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path))
    with pytest.raises(comfyui.ComfyUIError, match="COMFYUI_DIR=.*no main.py"):
        comfyui.fetch()


def test_user_comfyui_is_used_as_is_and_missing_requirements_are_named(tmp_path, monkeypatch):
    (tmp_path / "main.py").write_text("")
    (tmp_path / "requirements.txt").write_text("torch\nno-such-package-sspir\n")
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path))
    assert comfyui.comfyui_dir() == tmp_path.resolve()
    with pytest.raises(
        comfyui.ComfyUIError, match=r"lacks ComfyUI's requirements \(no-such-package-sspir.*COMFYUI_PYTHON"
    ):
        comfyui.ensure(sys.executable)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.py", "requirements.txt"]  # nothing written there


def _events(prompt_id: str = "p1") -> list[dict]:
    """A prompt's websocket messages as ComfyUI 0.3.75 sends them: a cached node, two nodes, ten steps."""
    out = [
        {"type": "execution_start", "data": {"prompt_id": prompt_id}},
        {"type": "execution_cached", "data": {"nodes": ["1"], "prompt_id": prompt_id}},
        {"type": "executing", "data": {"node": "2", "prompt_id": prompt_id}},
        {"type": "executing", "data": {"node": "3", "prompt_id": prompt_id}},
    ]
    out += [
        {"type": "progress", "data": {"value": v, "max": 10, "node": "3", "prompt_id": prompt_id}} for v in range(11)
    ]
    out += [
        {"type": "progress", "data": {"value": 5, "max": 10, "node": "9", "prompt_id": "another"}},
        {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}},
    ]
    return out


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 2.0  # every event 2 s after the last
        return self.t


def test_progress_prints_plain_lines_in_order_when_not_a_terminal():
    """Issue 27: the terminal showed nothing for minutes. Each node's start, then its progress every tenth with
    the time left from its own pace (2 s per step here), in order; another prompt's events are not shown."""
    import io

    import progress

    out = io.StringIO()
    view = progress.ProgressView(
        {"1": "Load Image", "2": "Loader", "3": "PGA Sampler (SSP-IR)"}, out, tty=False, clock=_Clock()
    )
    view.prompt_id = "p1"
    for event in _events():
        view.event(event)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["[2/3] Loader", "[3/3] PGA Sampler (SSP-IR)"]
    assert lines[2] == "[3/3] PGA Sampler (SSP-IR): 0/10"
    assert lines[3] == "[3/3] PGA Sampler (SSP-IR): 1/10, about 18 s left"  # 9 steps x 2 s
    assert lines[-1] == "[3/3] PGA Sampler (SSP-IR): 10/10" and len(lines) == 2 + 11
    assert "\r" not in out.getvalue() and "node 9" not in out.getvalue()


def test_progress_from_progress_state_alone_gives_the_same_lines():
    """The V3 API's set_progress (what the nodes use where the host offers it) sends only ``progress_state``
    (ComfyUI's ``comfy_execution/progress.py``): every non-pending node with its state. The lines must be the ones
    the legacy ``progress`` messages give; finished nodes and a node without a bar (max 1) add nothing."""
    import io

    import progress

    def as_state(event: dict) -> dict:
        if event["type"] != "progress":
            return event
        d = event["data"]
        nodes = {
            "2": {"value": 1, "max": 1, "state": "finished"},
            d["node"]: {"value": d["value"], "max": d["max"], "state": "running"},
        }
        return {"type": "progress_state", "data": {"prompt_id": d["prompt_id"], "nodes": nodes}}

    names = {"1": "Load Image", "2": "Loader", "3": "PGA Sampler (SSP-IR)"}
    texts = []
    for events in (_events(), [as_state(e) for e in _events()]):
        out = io.StringIO()
        view = progress.ProgressView(names, out, tty=False, clock=_Clock())
        view.prompt_id = "p1"
        for event in events:
            view.event(event)
        texts.append(out.getvalue())
    assert texts[1] == texts[0] and "10/10" in texts[1]


def test_progress_rewrites_one_line_on_a_terminal_and_ends_it():
    import io

    import progress

    out = io.StringIO()
    view = progress.ProgressView({"1": "A", "2": "B", "3": "C"}, out, tty=True, clock=_Clock())
    for event in _events():
        view.event(event)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, ended when the prompt is done
    assert text.count("\r") == 2 + 11 and "\r[3/3] C: 10/10" in text


def test_node_names_prefer_a_set_title_then_the_display_name():
    import progress

    prompt = {
        "1": {"class_type": "SSPIRSampler", "_meta": {"title": "SSPIRSampler"}},
        "2": {"class_type": "SaveImage", "_meta": {"title": "Save the result"}},
        "3": {"class_type": "X"},
    }
    names = progress.node_names(prompt, {"SSPIRSampler": "PGA Sampler (SSP-IR)", "SaveImage": "Save Image"})
    assert names == {"1": "PGA Sampler (SSP-IR)", "2": "Save the result", "3": "X"}


@pytest.mark.parametrize("threads, env", [(1, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}), (0, {})])
def test_the_server_thread_count(threads, env):
    assert run_workflow.thread_env(threads) == env
    assert run_workflow.DEFAULT_THREADS == 1  # measured: scripts/bench_first_run.py


# ---------------------------------------------------------------------------------------------- versions


def _fake_tarball(path, version="0.33.0", extra=None):
    """A ComfyUI-like source tarball: ComfyUI/main.py and the version file its main.py logs."""
    import io
    import tarfile

    files = {
        "ComfyUI/main.py": "print('hi')\n",
        "ComfyUI/comfyui_version.py": f'__version__ = "{version}"\n',
        "ComfyUI/requirements.txt": "torch\ntorchaudio\nav>=14\n",
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSPIR_COMFYUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    monkeypatch.delenv("COMFYUI_PYTHON", raising=False)
    return tmp_path / "cache"


def test_each_version_has_its_folder_and_the_033_folder_runs_in_its_own_venv(cache, monkeypatch):
    assert comfyui.comfyui_dir() == cache / "comfyui-0.3.75"
    assert comfyui.comfyui_dir("0.33.0") == cache / "comfyui-0.33.0"
    assert comfyui.comfyui_python(cache / "comfyui-0.33.0") == str(cache / "comfyui-0.33.0-venv" / "bin" / "python")
    assert comfyui.comfyui_python(cache / "comfyui-0.3.75") == sys.executable
    monkeypatch.setenv("COMFYUI_PYTHON", "/opt/py")
    assert comfyui.comfyui_python(cache / "comfyui-0.3.75") == "/opt/py"
    with pytest.raises(comfyui.ComfyUIError, match=r"0\.34\.0 is not one .*0\.3\.75, 0\.33\.0"):
        comfyui.comfyui_dir("0.34.0")


def test_a_lone_clone_has_no_033_and_says_which_file_is_missing(cache, tmp_path, monkeypatch):
    monkeypatch.delenv(comfyui.TARBALL_ENV, raising=False)  # a lone clone: nothing names a tarball, none is looked for
    with pytest.raises(comfyui.ComfyUIUnavailable, match=r"SSPIR_COMFYUI_033_TARBALL is not set"):
        comfyui.fetch(version="0.33.0")
    monkeypatch.setenv(comfyui.TARBALL_ENV, str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(comfyui.ComfyUIUnavailable, match=r"nowhere\.tar\.gz: set SSPIR_COMFYUI_033_TARBALL"):
        comfyui.fetch(version="0.33.0")
    assert not comfyui.is_ready("0.33.0")


def test_the_033_tarball_unpacks_into_the_cache_once(cache, tmp_path, monkeypatch):
    monkeypatch.setenv(comfyui.TARBALL_ENV, str(_fake_tarball(tmp_path / "c.tar.gz")))
    folder = comfyui.fetch(version="0.33.0")
    assert folder == cache / "comfyui-0.33.0" and (folder / "main.py").read_text() == "print('hi')\n"
    assert comfyui.read_version(folder) == "0.33.0"
    (tmp_path / "c.tar.gz").unlink()  # cached: the tarball is not read again
    assert comfyui.fetch(version="0.33.0") == folder
    assert not comfyui.is_ready("0.33.0")  # unpacked, but its venv is not built


@pytest.mark.parametrize(
    "version, extra, match",
    [
        ("0.32.0", None, r"carries ComfyUI 0\.32\.0, expected 0\.33\.0"),
        ("0.33.0", {"ComfyUI/../../evil.py": "x"}, r"unexpected path .*evil\.py"),
    ],
)
def test_a_wrong_or_unsafe_tarball_is_refused_and_nothing_is_cached(
    cache, tmp_path, monkeypatch, version, extra, match
):
    monkeypatch.setenv(comfyui.TARBALL_ENV, str(_fake_tarball(tmp_path / "c.tar.gz", version, extra)))
    with pytest.raises(comfyui.ComfyUIError, match=match):
        comfyui.fetch(version="0.33.0")
    assert not (cache / "comfyui-0.33.0").exists() and not (tmp_path / "evil.py").exists()


def test_the_033_venv_gets_torch_first_then_comfyui_without_torch_then_torchaudio_alone(tmp_path):
    folder = tmp_path / "ComfyUI"
    folder.mkdir()
    (folder / "requirements.txt").write_text("torch\ntorchvision\ntorchaudio\nav>=14\ncomfy-aimdo==0.4.13\n")
    steps = [cmd[5:] for cmd in comfyui.install.venv_steps(folder, "py", tmp_path / "req.txt")]
    assert steps == [
        ["--upgrade", "pip"],
        ["torch==2.14.1", "torchvision==0.29.1"],  # scripts/setup.sh's pins
        ["av>=14", "comfy-aimdo==0.4.13", "requests"],
        ["--no-deps", "torchaudio==2.11.1"],  # no torchaudio on PyPI is built for torch 2.14.1
        ["-r", str(tmp_path / "req.txt")],
    ]


def _server_with_log(tmp_path, log: str, version_file: str | None, **kw):
    comfy = tmp_path / "comfy"
    comfy.mkdir()
    if version_file is not None:
        (comfy / "comfyui_version.py").write_text(f'__version__ = "{version_file}"\n')
    srv = comfyui.ComfyServer(tmp_path / "work", comfy_dir=comfy, python="py", **kw)
    srv.work_dir.mkdir()
    srv.log_path.write_text(log)
    return srv


@pytest.mark.parametrize(
    "log, version_file, expect, error",
    [
        ("Total VRAM 0\nComfyUI version: 0.33.0\n", "0.33.0", "0.33.0", None),
        ("ComfyUI version: 0.3.75\n", "0.33.0", None, r"logged ComfyUI version '0\.3\.75', expected 0\.33\.0"),
        ("ComfyUI version: 0.33.0\n", "0.33.0", "0.3.75", r"logged ComfyUI version '0\.33\.0', expected 0\.3\.75"),
        ("starting\n", "0.33.0", None, r"logged ComfyUI version None"),
        ("ComfyUI version: 0.3.75\n...\nComfyUI version: 0.33.0\n", None, "0.33.0", None),  # the last start counts
        ("no version line\n", None, None, None),  # a tree without a version file: nothing to compare
    ],
)
def test_the_server_must_log_the_version_asked_for(tmp_path, log, version_file, expect, error):
    srv = _server_with_log(tmp_path, log, version_file, expect_version=expect)
    if error is None:
        srv._check_version()
    else:
        with pytest.raises(comfyui.ComfyUIError, match=error):
            srv._check_version()


def test_a_missing_033_skips_saying_why_and_fails_where_required(cache, tmp_path, monkeypatch):
    from tests.comfyui import conftest as comfy_conftest

    monkeypatch.setenv(comfyui.TARBALL_ENV, str(tmp_path / "absent.tar.gz"))
    monkeypatch.delenv("SSPIR_REQUIRE_COMFYUI_033", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match=r"0\.33\.0 .*needs? its source tarball, and .*absent\.tar\.gz is absent"
    ):
        comfy_conftest._prepared_host("0.33.0")
    monkeypatch.delenv(comfyui.TARBALL_ENV)
    with pytest.raises(pytest.skip.Exception, match=r"SSPIR_COMFYUI_033_TARBALL names none"):
        comfy_conftest._prepared_host("0.33.0")
    monkeypatch.setenv(comfyui.TARBALL_ENV, str(_fake_tarball(tmp_path / "c.tar.gz")))
    with pytest.raises(pytest.skip.Exception, match=r"not prepared .*scripts/setup\.sh --comfyui=0\.33\.0"):
        comfy_conftest._prepared_host("0.33.0")
    monkeypatch.setenv("SSPIR_REQUIRE_COMFYUI_033", "1")
    with pytest.raises(pytest.fail.Exception, match="SSPIR_REQUIRE_COMFYUI_033 is set but"):
        comfy_conftest._prepared_host("0.33.0")


def test_requires_comfyui_is_the_tested_range():
    """pyproject's requires-comfyui (the Comfy Registry's specifier form) admits every version the harness tests
    and no newer minor release, which nothing here has run."""
    import tomllib
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"])
    assert all(v in spec for v in comfyui.VERSIONS)
    assert "0.3.74" not in spec and "0.34.0" not in spec and "0.33.9" in spec


def test_a_server_of_an_unprepared_033_says_how_to_prepare_it(cache, tmp_path):
    folder = cache / "comfyui-0.33.0"
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("")
    srv = comfyui.ComfyServer(tmp_path / "work", comfy_dir=folder)
    with pytest.raises(comfyui.ComfyUIError, match=r"no Python at .*comfyui-0\.33\.0-venv.*fetch --version"):
        srv.start()
