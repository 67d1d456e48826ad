"""Bad command-line input to rates.py, cl.py and figures.py: exit code 2, one line naming the flag
and what is allowed, no traceback, and no existing result file changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cl import cli as cl_cli
from figures import cli as figures_cli
from moe_theory import cli as rates_cli

ROOT = Path(__file__).resolve().parent.parent
KEEP = "earlier results - must survive"


@pytest.fixture(scope="module")
def clis():
    """The CLI modules by the names of their ``experiments/`` scripts."""
    return {"rates": rates_cli, "cl": cl_cli, "figures": figures_cli}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    """A folder with an existing file, a rates run, a CL run and a non-writable directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file.txt").write_text(KEEP)
    rates_run = tmp_path / "rates_run"
    rates_run.mkdir()
    (rates_run / "config.json").write_text(json.dumps({"kind": "rates", "seed": 1}))
    (rates_run / "fits.csv").write_text(KEEP)
    cl_run = tmp_path / "cl_run"
    cl_run.mkdir()
    (cl_run / "config.json").write_text(json.dumps({"dataset": "synthetic", "method": "norga"}))
    (cl_run / "metrics.json").write_text(KEEP)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a symlink loop
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "metrics.json").write_text(KEEP)
    real_access = os.access
    # Tests may run as root, for whom chmod does not make a directory read-only: ask os.access.
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: (
        False if Path(p).resolve() == locked.resolve() and mode & os.W_OK
        else real_access(p, mode, *a, **k)))
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, every folder and link (a new empty folder counts as a change)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else
                                        b"<link>" if p.is_symlink() else b"<dir>")
            for p in root.rglob("*")}


TINY_RATES = ["--n-min", "100", "--n-max", "300", "--num-n", "3", "--replicates", "2",
              "--jobs", "1", "--no-figure", "--no-cache"]
CL_BASE = ["--dataset", "synthetic", "--quick", "--no-progress"]

CASES = [
    # rates.py: sizes, ranges, choices, paths
    ("rates", ["--n-min", "0"], "--n-min", ">= 1"),
    ("rates", ["--n-min", "-5"], "--n-min", ">= 1"),
    ("rates", ["--n-min", "1"], "--n-min", ">= 2"),
    ("rates", ["--n-max", "0"], "--n-max", ">= 1"),
    ("rates", ["--n-min", "1000", "--n-max", "100"], "--n-min", "n-min <= n-max"),
    ("rates", ["--num-n", "0"], "--num-n", ">= 1"),
    ("rates", ["--replicates", "-3"], "--replicates", ">= 1"),
    ("rates", ["--restarts", "0"], "--restarts", ">= 1"),
    ("rates", ["--max-iter", "0"], "--max-iter", ">= 1"),
    ("rates", ["--fit-n-min", "-1"], "--fit-n-min", ">= 1"),
    ("rates", ["--jobs", "0"], "--jobs", ">= 1"),
    ("rates", ["--seed", "-1"], "--seed", ">= 0"),
    ("rates", ["--gate", "softmax"], "--gate", "linear"),
    ("rates", ["--activation", "relu"], "--activation", "tanh"),
    ("rates", ["--expert", "quadratic"], "--expert", "affine"),
    ("rates", ["--setting", "huge"], "--setting", "exact"),
    ("rates", ["--preset", "huge"], "--preset", "quick"),
    ("rates", ["--backend", "spark"], "--backend", "dask"),
    ("rates", ["--scheduler", "tcp://x:1"], "--scheduler", "--backend dask"),
    ("rates", [*TINY_RATES, "--out", "a_file.txt"], "--out", "directory"),
    ("rates", [*TINY_RATES, "--out", "locked"], "--out", "writable"),
    ("rates", [*TINY_RATES, "--out", "cl_run"], "--out", "another --out"),
    ("rates", [*TINY_RATES[:-2], "--cache-dir", "a_file.txt"], "--cache-dir", "directory"),
    # rates.py: found by issue 15 (tracebacks, memory blow-ups, silent acceptance before)
    ("rates", ["--n-max", "1e400"], "--n-max", "positive integer"),
    ("rates", ["--n-max", "2.5"], "--n-max", "positive integer"),
    ("rates", [*TINY_RATES, "--num-n", "2"], "--num-n", "at least 3 distinct n"),
    ("rates", [*TINY_RATES, "--n-min", "300"], "--n-max", "n-min < n-max"),
    ("rates", ["--n-max", "1e12"], "--n-max", "GiB of memory"),
    ("rates", ["--num-n", "1e9"], "--num-n", "allowed: 1 to 99901"),
    ("rates", ["--replicates", "1e9"], "--replicates", "GiB of memory"),
    ("rates", ["--jobs", "100000"], "--jobs", "allowed: 1 to"),
    ("rates", [*TINY_RATES[:-1], "--cache-dir", "loop"], "--cache-dir", "symlink loop"),
    ("rates", [*TINY_RATES[:-1], "--cache-dir", "a_file.txt/sub"], "--cache-dir", "a file"),
    ("rates", [*TINY_RATES[:-1], "--cache-dir", "locked"], "--cache-dir", "writable"),
    ("rates", [*TINY_RATES, "--backend", "dask", "--scheduler", "tcp://127.0.0.1:1"],
     "--scheduler", "cannot reach"),
    ("rates", ["--backend", "dask", "--scheduler", "tcp//nowhere"], "--scheduler", "HOST:PORT"),
    ("rates", ["--backend", "dask", "--scheduler", "tcp://h:99999"], "--scheduler", "1..65535"),
    ("rates", ["--gate", "linear", "--no-baseline"], "--no-baseline", "--gate norga"),
    ("rates", [*TINY_RATES, "--out", ""], "--out", "empty path"),
    ("rates", [*TINY_RATES, "--out", "loop"], "--out", "symlink loop"),
    ("rates", [*TINY_RATES, "--out", "loop/run"], "--out", "symlink loop"),
    ("rates", [*TINY_RATES, "--out", "a_file.txt/run"], "--out", "a file"),
    # cl.py
    ("cl", ["--dataset", "imagenet99"], "--dataset", "synthetic"),
    ("cl", [*CL_BASE, "--method", "magic"], "--method", "norga"),
    ("cl", [*CL_BASE, "--backbone", "resnet"], "--backbone", "vit-tiny-random"),
    ("cl", [*CL_BASE, "--gate-act", "relu"], "--gate-act", "tanh"),
    ("cl", [*CL_BASE, "--attention", "flash"], "--attention", "fused"),
    ("cl", [*CL_BASE, "--epochs", "-1"], "--epochs", ">= 0"),
    ("cl", [*CL_BASE, "--batch-size", "0"], "--batch-size", "positive"),
    ("cl", [*CL_BASE, "--batch-size", "-4"], "--batch-size", "positive"),
    ("cl", [*CL_BASE, "--num-workers", "-1"], "--num-workers", ">= 0"),
    ("cl", [*CL_BASE, "--threads", "0"], "--threads", "allowed: 1 to"),
    ("cl", [*CL_BASE, "--stop-after-task", "-1"], "--stop-after-task", ">= 0"),
    ("cl", [*CL_BASE, "--device", "tpu"], "--device", "cpu"),
    ("cl", [*CL_BASE, "--set", "no_such_key=1"], "--set", "allowed"),
    ("cl", [*CL_BASE, "--set", "lr=fast"], "--set", "float"),
    ("cl", [*CL_BASE, "--method", "l2p", "--set", 'method_options={"pool_sise": 3}'],
     "--set method_options", "pool_size"),
    ("cl", [*CL_BASE, "--method", "smope", "--set", 'method_options={"schedule": "step"}'],
     "--set method_options", "coswm"),
    ("cl", [*CL_BASE, "--set", 'method_options={"top_k": 3}'], "--set method_options",
     "allowed"),
    ("cl", ["--dataset", "synthetic", "--backbone", "sup21k", "--weights", "missing.npz"],
     "--weights", "missing.npz"),
    ("cl", ["--dataset", "cifar100", "--data-root", "no_such_dir", "--weights", "a_file.txt"],
     "--data-root", "no_such_dir"),
    ("cl", [*CL_BASE, "--out", "a_file.txt"], "--out", "directory"),
    ("cl", [*CL_BASE, "--out", "locked"], "--out", "writable"),
    ("cl", [*CL_BASE, "--out", "rates_run"], "--out", "not a CL run"),
    # cl.py: found by issue 15 (tracebacks, data loss with --overwrite, silent acceptance)
    ("cl", [*CL_BASE, "--seed", "-1"], "--seed", "[0, 2^63)"),
    ("cl", [*CL_BASE, "--device", "cuda:99"], "--device", "allowed: auto, cpu"),
    ("cl", [*CL_BASE, "--device", "meta"], "--device", "allowed: auto, cpu"),
    ("cl", [*CL_BASE, "--set", "dataset=cifar100"], "--set", "use --dataset"),
    ("cl", [*CL_BASE, "--set", "seed=7"], "--set", "use --seed"),
    ("cl", [*CL_BASE, "--set", "method=hide"], "--set", "use --method"),
    ("cl", [*CL_BASE, "--set", 'dataset_options={"num_tasks":0}'], "--set dataset_options",
     "num_tasks must be in [1, 10]"),
    ("cl", [*CL_BASE, "--set", 'dataset_options={"bogus":1}'], "--set dataset_options",
     "allowed keys"),
    ("cl", [*CL_BASE, "--set", "dataset_options=[1]"], "--set dataset_options", "JSON object"),
    ("cl", [*CL_BASE, "--set", "tii_mlp=[0]"], "--set tii_mlp", "positive integers"),
    ("cl", [*CL_BASE, "--set", "tii_mlp=[2,"], "--set tii_mlp", "JSON list of integers"),
    ("cl", [*CL_BASE, "--set", "prompt_layers=[99]"], "--set prompt_layers", "[0, 6)"),
    ("cl", [*CL_BASE, "--set", "prompt_layers=[0,0]"], "--set prompt_layers", "distinct"),
    ("cl", [*CL_BASE, "--set", "prompt_length=100000"], "--set prompt_length", "GiB of memory"),
    ("cl", [*CL_BASE, "--set", "reg=nan"], "--set reg", "finite"),
    ("cl", [*CL_BASE, "--set", "lr=1e400"], "--set lr", "finite"),
    ("cl", [*CL_BASE, "--set", "clip_grad=-1"], "--set clip_grad", ">= 0"),
    ("cl", [*CL_BASE, "--set", "contrastive_temperature=inf"], "--set contrastive_temperature",
     "finite"),
    ("cl", [*CL_BASE, "--stop-after-task", "99"], "--stop-after-task", "allowed: 0 to 4"),
    ("cl", [*CL_BASE, "--threads", "100000"], "--threads", "allowed: 1 to"),
    ("cl", [*CL_BASE, "--num-workers", "100000"], "--num-workers", "allowed: 0 to"),
    ("cl", ["--dataset", "digits", "--data-root", "/nonexistent"], "--data-root",
     "not used by --dataset digits"),
    ("cl", [*CL_BASE, "--out", ""], "--out", "empty path"),
    ("cl", [*CL_BASE, "--out", "loop"], "--out", "symlink loop"),
    ("cl", [*CL_BASE, "--out", "a_file.txt/run"], "--out", "a file"),
    # cl.py: fields the chosen method does not use (silently ignored before)
    ("cl", [*CL_BASE, "--method", "l2p", "--set", "prompt_layers=[99]"], "--set prompt_layers",
     "[99] is not used by method l2p"),
    ("cl", [*CL_BASE, "--method", "dualprompt", "--set", "prompt_length=7"],
     "--set prompt_length", "e_layers"),
    ("cl", [*CL_BASE, "--method", "sprompt", "--set", "prompt_layers=[1]"],
     "--set prompt_layers", "not used by method sprompt"),
    ("cl", [*CL_BASE, "--method", "coda-prompt", "--set", "scheduler=cosine"], "--set scheduler",
     "not used by method coda-prompt"),
    ("cl", [*CL_BASE, "--method", "smope", "--set", "tii_mlp=[3]"], "--set tii_mlp",
     "a method that uses it: hide, norga"),
    ("cl", [*CL_BASE, "--method", "smope", "--set", "prompt_layers=[0]"], "--set prompt_layers",
     " layers"),
    ("cl", [*CL_BASE, "--set", "method.tii_mlp=[0]"], "--set method.tii_mlp", "positive"),
    ("cl", [*CL_BASE, "--set", "method.no_such=1"], "--set method_options", "allowed"),
    ("cl", [*CL_BASE, "--method", "sprompt", "--set", "reg=0.5"], "--set reg",
     "not used by method sprompt"),
    ("cl", [*CL_BASE, "--method", "hide", "--gate-act", "gelu"], "--gate-act",
     "a method that uses it: norga"),
    ("cl", [*CL_BASE, "--method", "l2p", "--attention", "reference"], "--attention",
     "not used by method l2p"),
    # figures.py
    ("figures", [], "RESULTS_DIR", "--write-example"),
    ("figures", ["no_such_dir"], "RESULTS_DIR", "directory"),
    ("figures", ["a_file.txt"], "RESULTS_DIR", "directory"),
    ("figures", ["rates_run", "--out", "a_file.txt"], "--out", "directory"),
    ("figures", ["rates_run", "--out", "locked"], "--out", "writable"),
    ("figures", ["rates_run", "--readme-images", "a_file.txt"], "--readme-images", "directory"),
    ("figures", ["--write-example", "a_file.txt"], "--write-example", "directory"),
    ("figures", ["rates_run", "--bogus"], "--bogus", "unrecognized"),
    ("figures", ["rates_run", "--readme-images", "locked"], "--readme-images", "writable"),
    ("figures", ["rates_run", "--out", "rates_run"], "--out", "contains RESULTS_DIR"),
    ("figures", ["rates_run", "--out", "."], "--out", "contains RESULTS_DIR"),
    ("figures", ["rates_run", "--out", "loop"], "--out", "symlink loop"),
    ("figures", [""], "RESULTS_DIR", "empty path"),
]


@pytest.mark.parametrize("cli, argv, flag, allowed", CASES,
                         ids=[f"{c}:{' '.join(a)[-40:]}" for c, a, _, _ in CASES])
def test_bad_input_exits_2_with_one_line(clis, workspace, capsys, monkeypatch, cli, argv, flag,
                                        allowed):
    import moe_theory.rates.sweep

    # unreachable: fail fast
    monkeypatch.setattr(moe_theory.rates.sweep, "DASK_CONNECT_TIMEOUT", 1.0)
    before = _snapshot(workspace)
    try:
        code = clis[cli].main(list(argv))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (code, captured.err[-1500:])
    if "--data-root" not in argv:  # a missing dataset adds the expected layout below line 1
        assert len(lines) == 1, captured.err
    assert flag in lines[0] and allowed in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert _snapshot(workspace) == before, "an existing file was changed"
