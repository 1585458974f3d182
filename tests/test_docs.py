"""README.md and docs/*.md as tested contracts: what they name exists in the code.

Checked on every page: each repository path exists; each `sspir <command>` is a subcommand of the CLI parser
and each --flag written after it (or after a `scripts/*.py` or `python -m sspir_core...` command) is an option of
that parser, found by argparse introspection; every --flag named anywhere is one of the project's or an
allow-listed flag of another tool; each `sspir_core.x.y` name resolves; links between the pages and their
#anchors resolve. README's Quick start keeps its shape, and `.ci/run` runs its test command. A planted page
shows every check reports what is wrong (the checks can fail).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEST_COMMAND = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
"""README's second Quick start command; `.ci/run` must run exactly this."""

MADE_HERE = {
    ".venv": "made by scripts/setup.sh, not tracked",
    "out": "outputs of scripts/run_workflow.py and of the pages' example commands, not tracked",
}
"""Repository-rooted folders that exist only after a command ran: their paths are not checked."""
NOT_OURS = {
    "example": "a folder name in ComfyUI's list of template folders (docs/nodes.md), not this repository's examples/",
}
"""Names close to a top-level entry of this repository that are meant as something else (a near miss fails)."""
OTHER_FILES = {
    "train.py": "the official SSP-IR training script",
    "train.sh": "the official SSP-IR training launcher (its hyper-parameters)",
    "train_osediff.py": "OSEDiff's training script",
    "main.py": "ComfyUI's entry script",
}
"""Bare script names (no folder) that belong to another project; any other bare *.py/*.sh/*.js must be ours."""
OTHER_FLAGS = {
    "--num_processes": "accelerate launch",
    "--num_machines": "accelerate launch",
    "--machine_rank": "accelerate launch",
    "--main_process_ip": "accelerate launch",
    "--main_process_port": "accelerate launch",
    "--multi_gpu": "accelerate launch",
    "--neg_prompt": "OSEDiff's training command",
    "--base-directory": "ComfyUI's main.py",
    "--no-deps": "pip install",
    "--system-site-packages": "python -m venv",
}
"""Flags of other tools that the pages name (ComfyUI's own `--cpu` is also one of `sspir train`'s)."""
REMAINDER_TO = {("eval", "--restore"): ("restore",)}
"""Options that pass the rest of the line to another subcommand (sspir_core/cli/eval.py: `restore.add_parser`)."""

FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w/.:-])\.?[\w.~<>*-]+(?:/[\w.~<>*-]*)+")
BARE_SCRIPT = re.compile(r"(?<![\w/.-])[\w-]+\.(?:py|sh|js)\b")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
DOTTED = re.compile(r"\bsspir_core(?:\.\w+)+")
SEPARATORS = {"&&", "||", ";", "|", "#"}


@dataclass(frozen=True)
class Code:
    """The code on a page: fenced blocks as (language, text) and inline spans."""

    blocks: list[tuple[str, str]]
    spans: list[str]

    def texts(self) -> Iterator[str]:
        yield from (text for _, text in self.blocks)
        yield from self.spans


def code_of(text: str) -> Code:
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    spans = [s.replace("\n", " ") for s in SPAN.findall(FENCE.sub("", text))]
    return Code(blocks, spans)


def commands_of(code: Code) -> Iterator[str]:
    """Shell command lines: each span, and each line of a non-Python block with its continuations joined."""
    for lang, text in code.blocks:
        if lang == "python":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            yield re.sub(r"(^|\s)#.*", "", line)
    yield from code.spans


# --- the parsers, by introspection ------------------------------------------------------------------------------


class _Grabbed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _grab_parser(main: Callable[[list[str]], object]) -> argparse.ArgumentParser:
    """The parser a ``main(argv)`` builds: stopped at its parse_args, before it does anything."""
    original = argparse.ArgumentParser.parse_args

    def grab(self, *args, **kwargs):
        raise _Grabbed(self)

    argparse.ArgumentParser.parse_args = grab
    try:
        main([])
    except _Grabbed as grabbed:
        return grabbed.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{main} returned without parsing arguments")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


@cache
def sspir_parser() -> argparse.ArgumentParser:
    from sspir_core.cli import build_parser

    return build_parser()


@cache
def script_parser(name: str) -> argparse.ArgumentParser | None:
    """The argparse parser of scripts/NAME.py (None: it takes no flags)."""
    path = REPO / "scripts" / f"{name}.py"
    text = path.read_text(encoding="utf-8")
    if delegate := re.search(r"from (sspir_core[\w.]*) import main\b", text):  # a script that runs a module's main
        return module_parser(delegate.group(1))
    if "ArgumentParser" not in text:
        return None
    spec = importlib.util.spec_from_file_location(f"_docs_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return _grab_parser(module.main)


@cache
def module_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``python -m sspir_core.x`` (its ``main(argv)``; a package's is in its ``__main__``)."""
    module = importlib.import_module(name)
    if hasattr(module, "__path__"):
        module = importlib.import_module(f"{name}.__main__")
    return _grab_parser(module.main)


def shell_options(script: Path) -> set[str]:
    """The options a bash script's ``case`` accepts (scripts/setup.sh has no argparse)."""
    return set(re.findall(r"^\s*(--[a-z][a-z0-9-]*)\)", script.read_text(encoding="utf-8"), re.M))


def options(parser: argparse.ArgumentParser | None) -> set[str]:
    return set() if parser is None else set(parser._option_string_actions)


@cache
def known_flags() -> frozenset[str]:
    """Every --flag of the project: sspir and its subcommands, the scripts, the pages' python -m entry points,
    setup.sh."""
    flags = options(sspir_parser())
    for sub in subcommands(sspir_parser()).values():
        flags |= options(sub)
    for script in sorted((REPO / "scripts").glob("*.py")):
        flags |= options(script_parser(script.stem))
    for page in PAGES:  # the `python -m sspir_core.x` entry points the pages run
        for module in set(re.findall(r"-m (sspir_core\.[\w.]+)", page.read_text(encoding="utf-8"))) - {
            "sspir_core.cli"
        }:
            flags |= options(module_parser(module))
    for script in sorted((REPO / "scripts").glob("*.sh")):
        flags |= shell_options(script)
    return frozenset(f for f in flags if f.startswith("--"))


# --- the checks: each returns the problems it found ------------------------------------------------------------


def _tokens(command: str) -> list[str]:
    return [t.strip("()[],;:'\"") for t in command.split()]


def _flag(token: str) -> str | None:
    m = FLAG.match(token)
    return m.group(0) if m else None


def _check_flags(
    tokens: list[str], parser: argparse.ArgumentParser | None, allowed: set[str], where: str, sub: str | None = None
) -> list[str]:
    problems = []
    flags = options(parser) | allowed
    for i, token in enumerate(tokens):
        if token in SEPARATORS:
            break
        flag = _flag(token)
        if flag is None:
            continue
        if flag not in flags:
            problems.append(f"{where}: {flag} is not an option of it")
            continue
        action = parser._option_string_actions.get(flag) if parser else None
        if action is not None and action.nargs == argparse.REMAINDER:
            target = REMAINDER_TO.get((sub, flag))
            if target is None:
                break
            rest = subcommands(sspir_parser())[target[0]]
            problems += _check_flags(tokens[i + 1 :], rest, set(), f"{where} {flag} (sspir {target[0]})")
            break
    return problems


def check_commands(command: str, page: str) -> list[str]:
    """`sspir SUB --flags`, `python -m sspir_core.cli SUB`, `scripts/X.py --flags`, `python -m sspir_core.M`."""
    problems: list[str] = []
    tokens = _tokens(command)
    for i, token in enumerate(tokens):
        after = tokens[i + 1 :]
        if token == "sspir" or (token == "sspir_core.cli" and tokens[i - 1 : i] == ["-m"]):
            if not after or after[0].startswith("<") or not re.fullmatch(r"-{0,2}[a-z][\w-]*", after[0]):
                continue  # `sspir` alone, or a placeholder such as `sspir <command>`
            if after[0].startswith("-"):
                problems += _check_flags(after, sspir_parser(), set(), f"{page}: `sspir`")
                continue
            subs = subcommands(sspir_parser())
            if after[0] not in subs:
                problems.append(f"{page}: `sspir {after[0]}` is not a subcommand (known: {', '.join(subs)})")
                continue
            problems += _check_flags(after[1:], subs[after[0]], set(), f"{page}: `sspir {after[0]}`", after[0])
        elif m := re.fullmatch(r"(?:\./)?scripts/(\w+)\.py", token):
            if not (REPO / "scripts" / f"{m.group(1)}.py").is_file():
                continue  # reported by the path check
            problems += _check_flags(after, script_parser(m.group(1)), set(), f"{page}: `{token}`")
        elif token == "scripts/setup.sh":
            problems += _check_flags(after, None, shell_options(REPO / token), f"{page}: `{token}`")
        elif tokens[i - 1 : i] == ["-m"] and token.startswith("sspir_core.") and token != "sspir_core.cli":
            problems += _check_flags(after, module_parser(token), set(), f"{page}: `python -m {token}`")
    return problems


def check_flag_names(text: str, page: str) -> list[str]:
    """Any --flag in code, even in prose without its command, is a flag of ours or an allow-listed one."""
    return [
        f"{page}: {flag} is no option of sspir, its subcommands or the scripts"
        for flag in FLAG.findall(text)
        if flag not in known_flags() and flag not in OTHER_FLAGS
    ]


def _exists(relative: str) -> bool:
    if any(c in relative for c in "<*"):  # a placeholder or a glob: something must match
        pattern = re.sub(r"<[^>]*>", "*", relative).rstrip("/")
        return any(REPO.glob(pattern))
    return (REPO / relative).exists()


@cache
def _repo_roots() -> frozenset[str]:
    return frozenset(p.name for p in REPO.iterdir() if p.name != ".git")


def check_paths(text: str, page: str) -> list[str]:
    problems = []
    for path in PATH.findall(text):
        relative = path.removeprefix("./")
        first = relative.split("/")[0]
        if first in MADE_HERE or relative.startswith(("http", "~")):
            continue
        if first in _repo_roots():
            if not _exists(relative):
                problems.append(f"{page}: `{path}` does not exist in the repository")
        elif first not in NOT_OURS and (near := difflib.get_close_matches(first, _repo_roots(), 1, 0.8)):
            problems.append(
                f"{page}: `{path}` looks like the repository's `{near[0]}/` but is not (typo? or add "
                "it to NOT_OURS with the reason)"
            )
    for name in BARE_SCRIPT.findall(text):
        if name not in OTHER_FILES and not _file_named(name):
            problems.append(f"{page}: no file named `{name}` in the repository")
    return problems


@cache
def _file_names() -> frozenset[str]:
    """Names of the repository's files, without the folders that setup or runs make (.venv alone is huge)."""
    names = set()
    for _root, dirs, files in os.walk(REPO):
        dirs[:] = [
            d for d in dirs if d not in {".git", "out", "__pycache__", "node_modules"} and not d.startswith(".venv")
        ]
        names.update(files)
    return frozenset(names)


def _file_named(name: str) -> bool:
    return name in _file_names()


def check_names(code: Code, page: str) -> list[str]:
    """`sspir_core.a.b` resolves to a module or an attribute; `from sspir_core import X` names public ones."""
    problems = []
    for dotted in {d for text in code.texts() for d in DOTTED.findall(text)}:
        if not _resolves(dotted):
            problems.append(f"{page}: `{dotted}` does not resolve")
    for lang, text in code.blocks:
        if lang != "python":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sspir_core"):
                problems += [
                    f"{page}: `from {node.module} import {a.name}` does not resolve"
                    for a in node.names
                    if not _resolves(f"{node.module}.{a.name}")
                ]
    return problems


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                try:
                    obj = importlib.import_module(f"{obj.__name__}.{attr}")
                    continue
                except (ModuleNotFoundError, AttributeError):
                    return False
            obj = getattr(obj, attr)
        return True
    return False


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", text), re.M)}


def check_links(text: str, page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            problems.append(f"{page.name}: link to {target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{page.name}: link to {target}: no heading with that anchor in {path.name}")
    return problems


def check_page(page: Path, text: str | None = None) -> list[str]:
    text = page.read_text(encoding="utf-8") if text is None else text
    code = code_of(text)
    name = page.relative_to(REPO).as_posix() if page.is_relative_to(REPO) else page.name
    problems = check_links(text, page) + check_names(code, name)
    for snippet in code.texts():
        problems += check_paths(snippet, name) + check_flag_names(snippet, name)
    for command in commands_of(code):
        problems += check_commands(command, name)
    return sorted(set(problems))


# --- the tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_path_command_flag_name_and_link_on_the_page_exists(page):
    problems = check_page(page)
    assert not problems, "\n".join(problems)


def test_the_checks_report_a_planted_page(tmp_path):
    """Each kind of mistake on a page is reported: the checks above can fail."""
    (tmp_path / "other.md").write_text("# A heading\n")
    page = REPO / "docs" / "planted.md"  # never written: its text is passed in
    text = (
        "Run `bash scripts/setup.sh --comfyui` and `python scripts/run_workflow.py example_workflows/api/x.json`.\n"
        "See `scripts/no_such_script.py`, `script/setup.sh` and `nodes/no_such_node.py`; `no_such_file.py`.\n\n"
        "```bash\nsspir restore photos/ -o out/ --no-such-flag \\\n    --steps 4\nsspir resotre x\n```\n\n"
        "`sspir eval --gt a --pred b --restore --bogus`, `scripts/run_workflow.py x --imagee y`,\n"
        "`python -m sspir_core.bench.dry_run --checks-onl`, `--tile-overlapp` alone, `bash scripts/setup.sh --gpu`.\n"
        "`sspir_core.restore.options.NO_SUCH_NAME`, [a](missing.md), [b](nodes.md#no-such-heading), "
        "[c](development.md#code-map).\n\n```python\nfrom sspir_core import load_pipeline, no_such_export\n```\n"
    )
    problems = "\n".join(check_page(page, text))
    for expected in (
        "`example_workflows/api/x.json` does not exist",
        "`scripts/no_such_script.py` does not exist",
        "`script/setup.sh` looks like the repository's `scripts/`",
        "`nodes/no_such_node.py` does not exist",
        "no file named `no_such_file.py`",
        "`sspir restore`: --no-such-flag is not an option",
        "`sspir resotre` is not a subcommand",
        "--restore (sspir restore): --bogus is not an option",
        "`scripts/run_workflow.py`: --imagee is not an option",
        "`python -m sspir_core.bench.dry_run`: --checks-onl is not an option",
        "--tile-overlapp is no option",
        "`scripts/setup.sh`: --gpu is not an option",
        "`sspir_core.restore.options.NO_SUCH_NAME` does not resolve",
        "`from sspir_core import no_such_export` does not resolve",
        "link to missing.md: no such file",
        "link to nodes.md#no-such-heading: no heading with that anchor",
    ):
        assert expected in problems, f"not reported: {expected}\n{problems}"
    # what is right on the same page is not reported
    for fine in ("--steps", "--comfyui", "development.md#code-map", "load_pipeline`", "photos/"):
        assert fine not in problems, problems


def test_readme_quick_start_is_two_one_command_blocks_and_ci_runs_the_second():
    """README's Quick start: a newcomer copies exactly two commands; the second is the suite, which CI runs."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = code_of(section).blocks
    assert [lang for lang, _ in blocks] == ["bash", "bash"], blocks
    commands = [text.strip() for _, text in blocks]
    assert all("\n" not in c for c in commands), commands
    first, second = commands
    prefix = "bash scripts/setup.sh --comfyui && .venv/bin/python scripts/run_workflow.py "
    assert first.startswith(prefix), first
    workflow = first.removeprefix(prefix)
    assert workflow.startswith("example_workflows/api/") and (REPO / workflow).is_file(), workflow
    assert second == TEST_COMMAND
    ci = [line.split("#")[0] for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert any(TEST_COMMAND in line for line in ci), ".ci/run does not run README's test command"


def test_readme_stays_an_entrance():
    """README is the entrance (issue 26): the details live in docs/, each page linked from it."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200, "README.md is over 200 lines: move the details to docs/"
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(readme) if t.startswith("docs/")}
    assert linked == {p.name for p in (REPO / "docs").glob("*.md")}, "a docs/ page is not linked from README"
