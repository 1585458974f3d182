"""Import rules of the code, read from the source with ``ast`` (no module is imported):

- no module imports another module's private (``_name``) names: what two modules share is public and documented;
- layers call only down, in the order of :data:`LAYERS` (the order in ``sspir_core/__init__.py``'s docstring).

Imports inside functions count: they are dependencies too, only deferred.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS: list[set[str]] = [
    {"errors"},
    {"files", "image_io", "devices", "host"},  # host: the ComfyUI harness, standard library only
    {"captioners"},
    {"models"},
    {"weights"},
    {"restore"},
    {"native"},
    {"evaluation", "demo"},
    {"training"},
    {"bench"},
    {"cli"},
    {"nodes"},
]
"""Bottom to top. A package may import its own modules and those of a lower layer, never of its own layer or a
higher one. ``sspir_core`` itself (the package root) gives only ``__version__`` to its subpackages."""

UPWARD_ALLOWED = {
    (
        "sspir_core.bench.dry_run",
        "nodes.native_patch",
    ): "the native dry run measures Apply SSP-IR's own patched UNet blocks (nodes/native_patch.py) on fake CUDA",
}
"""(importing module, imported module) pairs that climb, each with why."""


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted([*REPO.glob("sspir_core/**/*.py"), *REPO.glob("nodes/**/*.py")]):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def imports(module: str, source: str, is_package: bool) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import of ``source`` (relative ones resolved
    against ``module``; ``from a import b`` gives ``("a", "b")``)."""
    out: list[tuple[str, str | None, int]] = []
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(target, a.name, node.lineno) for a in node.names]
    return out


def _first_party(target: str) -> bool:
    return target.split(".")[0] in ("sspir_core", "nodes")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """The private names ``module`` takes from another first-party module."""
    bad = []
    for target, name, line in imports(module, source, is_package):
        if not _first_party(target):
            continue
        if name is not None and _private(name):
            bad.append(f"{module}:{line} imports {name} from {target}")
        elif any(_private(part) for part in target.split(".")):
            bad.append(f"{module}:{line} imports the private module {target}")
    return bad


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer index, package) of a first-party module; None for the ``sspir_core`` root."""
    parts = module.split(".")
    package = "nodes" if parts[0] == "nodes" else (parts[1] if len(parts) > 1 else None)
    if package is None:
        return None
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i, package
    raise AssertionError(f"{module}: package {package!r} is in no layer of LAYERS; add it where it belongs")


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that reach its own layer's other packages or a higher layer."""
    mine = layer_of(module)
    bad = []
    for target, name, line in imports(module, source, is_package):
        if not _first_party(target):
            continue
        full = f"{target}.{name}" if f"{target}.{name}" in KNOWN else target  # `from pkg import module`
        theirs = layer_of(full)
        if theirs is None:  # the sspir_core root: only its version, for a subpackage
            if mine is not None and mine[1] != "nodes" and name != "__version__":
                bad.append(f"{module}:{line} imports {name} from the sspir_core root (import it from its module)")
            continue
        if mine is None or theirs[1] == mine[1] or theirs[0] < mine[0]:
            continue
        if (module, full) in UPWARD_ALLOWED:
            continue
        bad.append(f"{module}:{line} ({mine[1]}) imports {full} ({theirs[1]}, layer {theirs[0]} >= {mine[0]})")
    return bad


ALL = _modules()
KNOWN = {m for m, _ in ALL}


def test_every_module_is_found() -> None:
    names = {m for m, _ in ALL}
    assert {"sspir_core.weights.sspir_file", "sspir_core.native.patch", "nodes.native_patch"} <= names
    assert len(ALL) > 100


def test_no_private_names_across_modules() -> None:
    bad = [b for m, p in ALL for b in private_imports(m, p.read_text(), p.name == "__init__.py")]
    assert not bad, "make what is shared public (with a docstring) or move it:\n" + "\n".join(bad)


def test_layers_call_only_down() -> None:
    bad = [b for m, p in ALL for b in upward_imports(m, p.read_text(), p.name == "__init__.py")]
    assert not bad, "a lower layer imports a higher one (see LAYERS):\n" + "\n".join(bad)


def test_the_allowed_climbs_still_exist() -> None:
    """An exception that no longer happens is dropped, not kept as a silent allowance."""
    found = {
        (m, f"{t}.{n}" if f"{t}.{n}" in KNOWN else t)
        for m, p in ALL
        for t, n, _ in imports(m, p.read_text(), p.name == "__init__.py")
    }
    assert set(UPWARD_ALLOWED) <= found


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "sspir_core.native.patch",
            "from ..weights.checkpoint import _meta, load_sspir_weights\n",
            ["sspir_core.native.patch:1 imports _meta from sspir_core.weights.checkpoint"],
        ),
        (
            "sspir_core.cli.eval",
            "def f():\n    from .restore import _device\n",
            ["sspir_core.cli.eval:2 imports _device from sspir_core.cli.restore"],
        ),
        (
            "nodes.x",
            "import sspir_core.weights._hidden\n",
            ["nodes.x:1 imports the private module sspir_core.weights._hidden"],
        ),
        ("sspir_core.weights.checkpoint", "from .. import __version__\nfrom torch.utils._pytree import tree_map\n", []),
    ],
)
def test_the_private_name_rule_can_fail(module: str, source: str, expected: list[str]) -> None:
    assert private_imports(module, source) == expected


@pytest.mark.parametrize(
    ("module", "source", "is_package", "expected"),
    [
        (
            "sspir_core.models.one_step",
            "from ..restore.schedulers import SD_SCHEDULE\n",
            False,
            ["sspir_core.models.one_step:1 (models) imports sspir_core.restore.schedulers (restore, layer 5 >= 3)"],
        ),
        ("sspir_core.training.models", "from ..demo import presets\n", False, []),
        (
            "sspir_core.demo.parity",
            "from ..training.losses import sspir_losses\n",
            False,
            ["sspir_core.demo.parity:1 (demo) imports sspir_core.training.losses (training, layer 8 >= 7)"],
        ),
        (
            "sspir_core.demo",
            "from ..evaluation import x\n",
            True,
            ["sspir_core.demo:1 (demo) imports sspir_core.evaluation (evaluation, layer 7 >= 7)"],
        ),
        (
            "sspir_core.restore.pipeline",
            "from .. import RestoreOptions\n",
            False,
            [
                "sspir_core.restore.pipeline:1 imports RestoreOptions from the sspir_core root (import it from "
                "its module)"
            ],
        ),
        (
            "nodes.sampling",
            "from sspir_core import RestoreOptions\nfrom sspir_core.restore import options\n",
            False,
            [],
        ),
        (
            "sspir_core.weights.base_match",
            "def f():\n    from ..native.layout import ldm_mismatch\n",
            False,
            ["sspir_core.weights.base_match:2 (weights) imports sspir_core.native.layout (native, layer 6 >= 4)"],
        ),
    ],
)
def test_the_layer_rule_can_fail(module: str, source: str, is_package: bool, expected: list[str]) -> None:
    assert upward_imports(module, source, is_package) == expected
