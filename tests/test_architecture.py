"""The house rules ARCHITECTURE.md states, checked on the code itself: no import cycles, short orchestrators, no engine
named in the modules that must work for any engine, and every registered engine and task carrying its own
deployment code. (The layers are checked by `lint-imports` with the contracts in pyproject.toml; .ci/run runs it.)"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "edgeslim"
sys.path.insert(0, str(ROOT / "scripts"))
import house  # noqa: E402


def test_no_import_cycles():
    assert house.cycles(house.imports()) == []


def test_cycles_are_found_when_there_are_some():
    g = {"edgeslim.a": {"edgeslim.b"}, "edgeslim.b": {"edgeslim.c"}, "edgeslim.c": {"edgeslim.a"}, "edgeslim.d": set()}
    assert house.cycles(g) == [["edgeslim.a", "edgeslim.b", "edgeslim.c"]]


@pytest.mark.parametrize("module", ["study.py", "deploy.py", "bench.py", "cli.py", "api.py"])
def test_no_function_over_80_lines(module):
    assert house.long_functions(SRC / module, 80) == []


def _strings(path: Path) -> set[str]:
    """String constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs}


@pytest.mark.parametrize("module", ["deploy.py", "study.py", "bench.py", "devices/base.py"])
def test_engine_agnostic_modules_name_no_engine(module):
    from edgeslim.engines import ENGINES

    names = set(ENGINES.names())
    found = {s for s in _strings(SRC / module) if s in names}
    assert not found, f"{module} names engines {found}: ask the engine object instead"


def _defines(path: Path, *names: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    got = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    got |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return set(names) - got


def test_every_engine_carries_its_deployment():
    from edgeslim.engines import ENGINES, get_engine

    for name in ENGINES.names():
        e = get_engine(name)
        assert e.package != "?" and e.model_files, name
        assert e.main_role in e.model_files and set(e.roles) == set(e.model_files), name
        t = e.template_path()
        assert t.is_file() and _defines(t, "make_runner") == set(), f"{name}: {t}"
        imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(t.read_text())) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(t.read_text())) if isinstance(n, ast.ImportFrom) and n.module}
        assert "edgeslim" not in imported, f"{t} imports edgeslim: a delivered folder must run without it"


def test_every_task_carries_its_program():
    from edgeslim.tasks import TASKS

    for name in TASKS.names():
        p = TASKS.get(name).program_path()
        assert p.is_file() and _defines(p, "main", "USAGE") == set(), f"{name}: {p}"


def test_snippet_joins_head_template_and_program_into_one_valid_program(tmp_path):
    from edgeslim import deploy
    from edgeslim.engines import ENGINES, get_engine

    for name in ENGINES.names():
        d = {"engine": name, "precision": "fp32", "engine_version": "1", "task": {"name": "raw"}}
        code = deploy.snippet(d)
        tree = ast.parse(code)  # one valid module
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"read_deploy", "arguments", "make_runner", "main"} <= defined, name
        assert get_engine(name).package in ast.get_docstring(tree)


def _module_with(tmp_path: Path, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(body)
    sys.path.insert(0, str(tmp_path))
    return name


def test_optional_command_missing_its_extra_is_mounted_as_a_hint(tmp_path, monkeypatch, capsys):
    import typer

    from edgeslim import cli

    mod = _module_with(tmp_path, "es_needs_torch", "import torch_is_not_here_xyz\n")
    monkeypatch.setitem(cli._EXTRAS, "torch_is_not_here_xyz", "train")
    monkeypatch.setattr(cli, "_OPTIONAL", {"needs-torch": mod})
    monkeypatch.setattr(cli, "app", typer.Typer())
    cli._mount_optional()
    names = [c.name for c in cli.app.registered_commands]
    assert "needs-torch" in names
    with pytest.raises(SystemExit) as e:
        cli.main(["needs-torch"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "edgeslim[train]" in err and "torch_is_not_here_xyz" in err


def test_optional_command_with_another_import_error_is_not_hidden(tmp_path, monkeypatch):
    import typer

    from edgeslim import cli

    assert importlib.util.find_spec("not_an_extra_package_xyz") is None
    mod = _module_with(tmp_path, "es_broken", "import not_an_extra_package_xyz\n")
    monkeypatch.setattr(cli, "_OPTIONAL", {"broken": mod})
    monkeypatch.setattr(cli, "app", typer.Typer())
    with pytest.raises(ModuleNotFoundError):
        cli._mount_optional()
