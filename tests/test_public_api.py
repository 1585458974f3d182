"""The package's public names resolve, and its docstring example runs on the tiny demo files."""

from __future__ import annotations

import importlib
import pkgutil

import torch

import sspir_core


def test_every_exported_name_resolves() -> None:
    missing = [n for n in sspir_core.__all__ if getattr(sspir_core, n, None) is None]
    assert missing == []


def test_every_module_imports() -> None:
    """No import circle or stale path left by a move: each module imports on its own."""
    failed = {}
    for info in pkgutil.walk_packages(sspir_core.__path__, "sspir_core."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # report them all at once
            failed[info.name] = repr(exc)
    assert failed == {}


def test_docstring_example_runs_on_demo_files(tmp_path) -> None:
    from sspir_core import RestoreOptions, load_pipeline, restore_image, save_png
    from sspir_core.demo.model_files import write_demo_models

    files = write_demo_models(tmp_path, captioner=False)
    pipe = load_pipeline(files["sd"], files["sspir"], files["clip_vision"], device="cpu", dtype=torch.float32)
    lq = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(0))
    image = restore_image(pipe, lq, "a photo", RestoreOptions(steps=1, cfg=7.5), upscale=2)
    assert image.shape == (1, 3, 32, 24) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert save_png(image, tmp_path / "restored.png")[0].is_file()


def _import_graph() -> dict[str, set[str]]:
    """Module -> the sspir_core modules it imports anywhere (top level or inside functions), from the source."""
    import ast
    from pathlib import Path

    root = Path(sspir_core.__file__).parent
    modules = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (f, parts[-1] == "__init__")
    graph: dict[str, set[str]] = {}
    for name, (f, is_pkg) in modules.items():
        package = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_no_import_circle() -> None:
    """A circle (even through a lazy import) means two modules each need the other: one of them is misplaced.

    A package's ``__init__`` re-exporting its own modules is not a circle of design, so edges into a package
    from its own submodules are left out.
    """
    graph = _import_graph()
    for name, edges in graph.items():
        edges -= {e for e in edges if name.startswith(e + ".")}  # a submodule naming its own package
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []
