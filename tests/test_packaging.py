"""Packaging: the one version and ``--version`` on the three commands, every imported
third-party module declared in the extra of the half that imports it, the friendly message for a
missing extra, and the figures package leaving the user's matplotlib backend alone."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import warnings
from importlib.metadata import EntryPoint, packages_distributions
from pathlib import Path

import pytest

import norga
from norga.extras import require_extra

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = ("norga-rates", "norga-cl", "norga-figures")
#: The extra that must declare what each package imports (``None``: the base dependencies).
HALVES = {"moe_theory": "theory", "cl": "cl", "figures": "figures", "norga": None,
          "tests": "dev", "benchmarks": "dev", "experiments": None}
#: Extras a package may import when they are there: dask behind ``--backend dask``; joblib's
#: workers stopped by norga.signals on Ctrl-C (only the theory half starts them); wandb behind
#: ``norga-cl --wandb``.
OPTIONAL = {"moe_theory": ("dask",), "norga": ("theory",), "cl": ("wandb",)}


def _requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


def _declared(extra: str | None) -> set[str]:
    """Distributions the base dependencies plus ``extra`` install (``norga[...]`` expanded)."""
    reqs = list(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    todo, seen = [extra] if extra else [], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in extras[name]:
            inner = re.fullmatch(r"norga\[([\w,-]+)\]", req)
            if inner:
                todo += inner.group(1).split(",")
            else:
                reqs.append(req)
    return {_requirement_name(r) for r in reqs}


def _halves_imported(package: str) -> set[str]:
    """The other halves (moe_theory, cl, figures) that ``package`` imports anywhere."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found |= {n.split(".")[0] for n in names} & {"moe_theory", "cl", "figures"}
    return found - {package}


def _third_party_imports(package: str) -> set[str]:
    """Top-level names imported anywhere in ``package`` (function-level imports included)."""
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    local = {p.stem for p in (ROOT / package).glob("*.py")}  # the folder's own helper modules
    return names - set(sys.stdlib_module_names) - set(HALVES) - local


def test_version_is_single_sourced() -> None:
    """pyproject reads the version from norga.__version__; CITATION.cff and the newest CHANGELOG
    release say the same."""
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "norga.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", norga.__version__)
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: \"?([\d.]+)\"?$", cff, re.M).group(1) == norga.__version__
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == norga.__version__


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_version_flag_on_each_command(name: str, monkeypatch, capsys) -> None:
    value = PYPROJECT["project"]["scripts"][name]
    monkeypatch.setattr(sys, "argv", [name, "--version"])
    with pytest.raises(SystemExit) as exc:
        EntryPoint(name, value, "console_scripts").load()()
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"{name} {norga.__version__}\n"


@pytest.mark.slow
@pytest.mark.parametrize("package", sorted(HALVES))
def test_every_imported_package_is_declared(package: str) -> None:
    """A module that ``package`` imports belongs to a distribution its extra declares."""
    dists = packages_distributions()
    declared = _declared(HALVES[package]).union(*(_declared(e) for e in OPTIONAL.get(package, ())))
    undeclared = {}
    for module in sorted(_third_party_imports(package)):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        # numba's own compiler backend comes with numba
        if module == "llvmlite" and "numba" in declared:
            continue
        if not names & declared:
            undeclared[module] = sorted(names)
    assert not undeclared, f"{package} imports undeclared packages: {undeclared}"


@pytest.mark.parametrize("package", ["moe_theory", "cl", "figures"])
def test_a_half_that_imports_another_installs_it(package: str) -> None:
    """norga-rates draws figures: the theory extra must bring the figures half's needs."""
    for other in _halves_imported(package):
        assert _declared(HALVES[other]) <= _declared(HALVES[package]), (package, other)


def test_the_dev_extra_installs_every_half() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "norga[theory,cl,figures]" in extras["all"] and "norga[all,docs]" in extras["dev"]
    assert {"pytest", "mpmath", "dask"} <= {_requirement_name(r) for r in extras["dev"]}


def test_missing_extra_names_the_install_command() -> None:
    require_extra("x", "theory", ("json",))  # present: nothing happens
    with pytest.raises(ModuleNotFoundError, match=r"x needs no_such_mod_27, which the 'cl' extra "
                       r"installs: pip install 'norga\[cl\]'") as err:
        require_extra("x", "cl", ("json", "no_such_mod_27"))
    assert err.value.name == "no_such_mod_27"


def test_style_file_is_valid_and_complete() -> None:
    import matplotlib

    from figures.style import STYLE_FILE, style_rc

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a misspelt key or bad value warns
        rc = matplotlib.rc_params_from_file(STYLE_FILE, use_default_template=False)
    keys = [line.split(":")[0] for line in STYLE_FILE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert len(rc) == len(keys) == len(set(keys))
    assert style_rc()["savefig.dpi"] == 300 and style_rc()["pdf.fonttype"] == 42


@pytest.mark.slow
def test_importing_figures_keeps_the_users_backend(tmp_path: Path) -> None:
    """With MPLBACKEND=svg, importing and using figures leaves the backend svg."""
    code = ("import matplotlib, figures, figures.report\n"
            "from figures.style import figure_style, save_figure\n"
            "from matplotlib.figure import Figure\n"
            "with figure_style():\n"
            "    fig = Figure(); fig.subplots().plot([0, 1])\n"
            f"save_figure(fig, {str(tmp_path / 'f')!r})\n"
            "print(matplotlib.rcParams['backend'], matplotlib.get_backend())\n")
    env = {"MPLBACKEND": "svg", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == ["svg", "svg"]
    assert (tmp_path / "f.pdf").exists() and (tmp_path / "f.png").exists()


def test_a_script_runs_when_another_half_lacks_its_extra(tmp_path, monkeypatch) -> None:
    """experiments/rates.py in a theory-only install: the shadowed ``cl`` package cannot be
    imported (no torch), which must not stop the theory command; a needed package still must."""
    from norga.script import import_past

    site, scripts = tmp_path / "site", tmp_path / "experiments"
    for name, body in (("half_ok", "VALUE = 1\n"),
                       ("half_bad", "raise ModuleNotFoundError('no dep', name='absent_dep')\n")):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(body)
    scripts.mkdir()
    for name in ("half_ok", "half_bad"):
        (scripts / f"{name}.py").write_text("raise SystemExit('the shadowing script ran')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(scripts))
    names = ("half_ok", "half_bad")
    import_past(scripts, names, needed={"half_ok"})
    assert sys.modules.pop("half_ok").VALUE == 1 and "half_bad" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="no dep"):
        import_past(scripts, names, needed={"half_ok", "half_bad"})
    sys.modules.pop("half_ok", None)
