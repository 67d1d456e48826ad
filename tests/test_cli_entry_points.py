"""The installed commands norga-rates / norga-cl / norga-figures and their experiments/ scripts:
[project.scripts] entry points, --help, one-line errors with exit 2, no import-path edits, and the
scripts whose names shadow a package (experiments/cl.py, experiments/figures.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {  # command -> (its experiments/ script, one bad argument list, the flag it names)
    "norga-rates": ("rates", ["--n-min", "x"], "--n-min"),
    "norga-cl": ("cl", ["--dataset", "nope"], "--dataset"),
    "norga-figures": ("figures", ["--out", " "], "--out"),
}


def _entry_points() -> dict[str, EntryPoint]:
    """The ``[project.scripts]`` table of pyproject.toml (``name = "module:function"`` lines;
    tomllib is not in Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    table = text.split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    pairs = re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"\s*$', table, flags=re.M)
    return {name: EntryPoint(name, value, "console_scripts") for name, value in pairs}


def test_pyproject_declares_the_three_commands() -> None:
    points = _entry_points()
    assert set(points) == set(COMMANDS)
    for name, (script, _, _) in COMMANDS.items():
        package = {"rates": "moe_theory"}.get(script, script)
        assert points[name].value == f"{package}.cli:run"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_entry_point_help(name: str, monkeypatch, capsys) -> None:
    """What the console-script wrapper does: ``sys.exit(run())`` with the command's argv."""
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exc:
        _entry_points()[name].load()()
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {name} ")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_entry_point_bad_value_one_line_exit_2(name: str, monkeypatch, capsys) -> None:
    _, bad, flag = COMMANDS[name]
    monkeypatch.setattr(sys, "argv", [name, *bad])
    with pytest.raises(SystemExit) as exc:
        _entry_points()[name].load()()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"{name}: error: argument {flag}"), err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_main_by_import_names_the_script(name: str, capsys) -> None:
    """``main(argv)`` called by import speaks as the experiments/ script (the documented
    messages), ``main(argv, prog=...)`` as the caller says."""
    module = _entry_points()[name].load().__module__
    main = sys.modules[module].main
    script, bad, flag = COMMANDS[name]
    for prog, kwargs in ((f"{script}.py", {}), ("other", {"prog": "other"})):
        with pytest.raises(SystemExit) as exc:
            main(bad, **kwargs)
        assert exc.value.code == 2
        assert capsys.readouterr().err.startswith(f"{prog}: error: argument {flag}")


def test_no_import_path_edit_in_the_repository() -> None:
    edit = re.compile(r"sys\.path\s*(\[[^\]]*\]\s*=|=|\.(insert|append|extend|remove|pop|clear)"
                      r"\b|\+=)")
    offenders = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part in ("build", "dist") for part in parts):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if edit.search(line) and path.name != Path(__file__).name:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.slow
@pytest.mark.parametrize("script", ["rates", "cl", "figures"])
def test_documented_script_runs(script: str, tmp_path: Path) -> None:
    """``python experiments/<script>.py`` from another folder: --help works and a bad value is
    one line and exit 2 (``cl.py`` and ``figures.py`` share their name with a package)."""
    path = ROOT / "experiments" / f"{script}.py"
    done = subprocess.run([sys.executable, str(path), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {script}.py ")
    name = next(n for n, (s, _, _) in COMMANDS.items() if s == script)
    _, bad, flag = COMMANDS[name]
    done = subprocess.run([sys.executable, str(path), *bad], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr[-2000:]
    assert done.stderr.startswith(f"{script}.py: error: argument {flag}")


@pytest.mark.slow
def test_script_imports_the_package_past_a_shadowing_file(tmp_path: Path) -> None:
    """A script next to a ``figures.py`` and a ``cl.py`` still gets the packages."""
    for shadow in ("figures", "cl"):
        (tmp_path / f"{shadow}.py").write_text("raise SystemExit('the shadowing file ran')\n")
    (tmp_path / "run_it.py").write_text(
        "from pathlib import Path\n"
        "from norga.script import import_past\n"
        "import_past(Path(__file__).parent)\n"
        "import cl.cli, figures.cli\n"
        "print(Path(cl.cli.__file__).parent.parent, Path(figures.cli.__file__).parent.parent)\n")
    done = subprocess.run([sys.executable, str(tmp_path / "run_it.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    roots = {Path(p) for p in done.stdout.split()}
    assert len(roots) == 1 and (roots.pop() / "norga" / "script.py").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_installed_command(name: str) -> None:
    """The console script next to this Python, where the project is installed with them."""
    command = Path(sys.executable).parent / name
    if not command.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e .)")
    done = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: {name} "), done.stderr
    _, bad, flag = COMMANDS[name]
    done = subprocess.run([str(command), *bad], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"{done.stderr.strip()}"]
    assert done.stderr.startswith(f"{name}: error: argument {flag}")
