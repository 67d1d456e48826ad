"""The files of the quick synthetic CL run, byte for byte (sha256), before and after refactors.

The ``EXACT`` digests were taken on ``main`` at ``bde7ffd``, before ``cl/run/engine.py`` and
``cl/backbones/loading.py`` were split into modules with one job (issue 17): moving code between
modules must not move a single byte of what a run writes (``FLOAT_BITS``: at ``d62da4d``). The
run is the one ``experiments/cl.py --dataset synthetic --quick`` makes (seed 42, one torch
thread), shared with ``test_golden_runs.py`` through the ``quick_synthetic_cl_run`` fixture.

Two kinds of files:

* ``EXACT``: counts and the numbers made from them (accuracy matrices, metrics, class order,
  configuration, prompt selection counts, ``SHA256SUMS`` without its ``env.json`` and
  ``log.jsonl`` lines). Rounding moves no prediction of this easy benchmark (measured: the
  same bytes on the AVX-512, AVX2 and the older-kernel path of ``.ci/run_emulated_cpu``), so they
  are checked everywhere.
* ``FLOAT_BITS``: the checkpoints and ``log.jsonl`` (losses). Their bits depend on the torch /
  timm / NumPy build, on the CPU kernels torch, MKL and oneDNN pick, and on environment
  variables that narrow them, so they are checked only where :func:`fingerprint` equals a key
  of ``FLOAT_BITS`` (elsewhere the test is skipped and names both). Identical bytes are
  promised on one machine and environment, not across CPUs; the numbers themselves are pinned
  everywhere, to a measured tolerance, by ``test_golden_runs.py``. The AVX-512 digests this
  file held until issue 22 were dropped: their fingerprint did not record the CPU model.

Left out: ``env.json`` (git commit, package versions, platform) and ``.lock``; in
``log.jsonl`` the wall-clock fields ``time`` and ``seconds`` are dropped before hashing.

To print new digests (only for a deliberate change of the output, stated in the commit message):
``PYTHONPATH=. python tests/test_cl_byte_identity.py`` prints ``EXACT`` and this machine's
``FLOAT_BITS`` entry; a change of the output drops the other machines' entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import pytest

METHODS = ("hide", "norga")
# files a run writes; any other file (or a missing one) fails the test
FILES = (".lock", "SHA256SUMS", "accuracy_matrix.csv", "accuracy_matrix_before_alignment.csv",
         "class_order.json", "config.json", "env.json", "log.jsonl", "metrics.json",
         "task_selection.json") + tuple(
             f"checkpoints/task_{t}.pt{ext}" for t in range(5) for ext in ("", ".sha256"))
VOLATILE_FILES = ("env.json", "log.jsonl")  # their SHA256SUMS lines are dropped
VOLATILE_LOG_KEYS = ("time", "seconds")
# digests: file -> method -> sha256 of canonical_bytes
EXACT_FILES = ("SHA256SUMS", "accuracy_matrix.csv", "accuracy_matrix_before_alignment.csv",
               "class_order.json", "config.json", "metrics.json", "task_selection.json")

EXACT: dict[str, dict[str, str]] = {
    "SHA256SUMS": {
        "hide": "5f1304f74bb3ab00e091559f5101ad01e559b8a9520e90218ad449b2461178d3",
        "norga": "c710ec38448960193728748be546a2d6a821bc6a2052857d35d725ffed412dca"
    },
    "accuracy_matrix.csv": {
        "hide": "9f15394dc3c20933b44a9ddadbeb1f7b64871c04c876c03c654af50f5ea626e8",
        "norga": "8d2ba3a954289d63e7b1cb04a29a5b33673085aa0d80c41666f2a7b79b6b0ba0"
    },
    "accuracy_matrix_before_alignment.csv": {
        "hide": "0c4b29ef27f97afb0776bd53f7c265dc2af35e65e5bb2856c8a2d1640932fa4c",
        "norga": "d2fe301fc4cb32674e8f9211c78ba67805ec44a52bd95cf6dc52beab0f54dfd7"
    },
    "class_order.json": {
        "hide": "6cc28386658ec69dffea7f7b23828edde6eb18d9021d0fe8f3c1001928cd1612",
        "norga": "6cc28386658ec69dffea7f7b23828edde6eb18d9021d0fe8f3c1001928cd1612"
    },
    "config.json": {
        "hide": "dc3b1f2c45b688b7f352a342b352121dcec3e4161711c2e7085c209a4087c68e",
        "norga": "bb11929541933f1fbf1be06e54f120b4d38b4ab2f386799c3f602813b745ac70"
    },
    "metrics.json": {
        "hide": "9e9bdba37594cbe52e0bf0cd18f79319e7f5bdc12d38ed211c1f952cd6dbf573",
        "norga": "5a14f89f32d9cb1981b44c2df1b149ce6721262a7818ff939e7069ad4a910488"
    },
    "task_selection.json": {
        "hide": "72be2e5ddf0b2a33105afbfa9faed6efe735cce495073153b7520a9dd5150718",
        "norga": "4d541d0ec3ccb7d498fc7f8e6ada59ba22fff31029d4f640ed5ac4a6ba21f699"
    }
}
# fingerprint -> file -> method -> sha256; one entry per machine + environment that was pinned
FLOAT_BITS: dict[str, dict[str, dict[str, str]]] = {
    "torch 2.14.1+cu130, timm 1.0.31, numpy 2.4.6, x86_64 AVX2, AuthenticAMD AMD EPYC": {
        "checkpoints/task_0.pt": {
            "hide": "85f99918beb76d7e0e4a8a7528c9e33bbe421bad29eb4b48f0f69e2f6961c54f",
            "norga": "f5f8b5869dbbe0710c27ac51a28557e456dac39a3010b6153562b872e2b566ca"
        },
        "checkpoints/task_0.pt.sha256": {
            "hide": "321a848363fed3d3847525f879768ab913afa472482ab72c64550fb79c16322b",
            "norga": "37eef1f63e65ddd7a7f58c729eb885ebfd0436f68242439fc48deea0a37ddeaa"
        },
        "checkpoints/task_1.pt": {
            "hide": "3b9ff9ac28527daa7b559510fa021d225744d0f69ec18c432f6b40ca3793c11e",
            "norga": "c0acfaec248ab7753577960b5ab1b215765d325a6895981f2c76a9d35ddfabb7"
        },
        "checkpoints/task_1.pt.sha256": {
            "hide": "994699d744b7d4c052690a2a3e9dca1c92653bb7f87827b5ca981f1430e38de8",
            "norga": "1a6fad542800a0e6c5dfebd3b36f2255b8ef85dfcf15c5aeca10f8a7ca271b3d"
        },
        "checkpoints/task_2.pt": {
            "hide": "9069719cf3b5ada2b19602d1ff75c682012dd5a1d391c476f917e4bceb79fb09",
            "norga": "5865f766093d4e75ddce80e5315f8377bff76018819323586c7798ecdf363986"
        },
        "checkpoints/task_2.pt.sha256": {
            "hide": "e0b5b4bd6e881b6420453b4bdb60555f97266f18f386910b9d433164e51696ae",
            "norga": "2579e2c4c58405aa29977efacfe6fba3033d137e64a9936b829be37998454a75"
        },
        "checkpoints/task_3.pt": {
            "hide": "dcaace926e5c084488a26e784c06d44188dac700d6802ed60600d9729bf36511",
            "norga": "b112e8e5a4ac4d63968856d8f0ac92e8c1a6099aa9273491583db1c2bb753c0f"
        },
        "checkpoints/task_3.pt.sha256": {
            "hide": "e2b80d12bf007ba2afa519cb9fabf493a126405b6fff104380d56520e3cbada4",
            "norga": "3c7c8ea2f4c7fbcdf9272ed900a5407413bca641b3bed04c5a336eb03fda7948"
        },
        "checkpoints/task_4.pt": {
            "hide": "e766c7d57571fc445f162c38cb315696f82453f5a51d2ceec1086501af18103b",
            "norga": "563c18f136eb0e3180dfa202c0e1abd5eb8c7490a8168af48b17ab4d18cfa626"
        },
        "checkpoints/task_4.pt.sha256": {
            "hide": "42dc71b4ec72b12f6baeeb1b73454730bde9ff80d6820024f65b224beca1b49b",
            "norga": "21a714eabbabac54ef330ab073a86a61437ffc40d969376959b19c27518a6d21"
        },
        "log.jsonl": {
            "hide": "a450a027fcd584597a6a3b4d33f984f5da01f2b4748e3fd107ad165873159d8a",
            "norga": "0dcb2ab3920d27bcee1f2f641c04b53045d2470f997405d60dbf438e45be701b"
        },
    },
}


def _cpu_model() -> str:
    """The CPU's vendor and model name (Linux ``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in info.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return f"{fields.get('vendor_id', '?')} {fields.get('model name', '?')}"


# Environment variables that change which float kernels a library picks (.ci/run_emulated_cpu)
KERNEL_KNOBS = ("MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "NUMBA_CPU_NAME")


def fingerprint() -> str:
    """The build, CPU and environment facts that fix the bits of a float computation on the CPU.

    torch's kernel set (``get_cpu_capability``, which ``ATEN_CPU_CAPABILITY`` lowers), the CPU
    model (MKL and oneDNN pick kernels and blocking by vendor and model) and any environment
    variable that narrows a library's kernels.
    """
    import numpy
    import timm
    import torch

    knobs = [f"{k}={os.environ[k]}" for k in KERNEL_KNOBS if os.environ.get(k)]
    return (f"torch {torch.__version__}, timm {timm.__version__}, numpy {numpy.__version__}, "
            f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}, {_cpu_model()}"
            + "".join(f", {k}" for k in knobs))


def canonical_bytes(run_dir: Path, name: str) -> bytes:
    """The bytes of a result file that a rerun must reproduce (wall-clock fields removed)."""
    data = (run_dir / name).read_bytes()
    if name == "log.jsonl":
        lines = []
        for line in data.decode("utf-8").splitlines():
            record = json.loads(line)
            for key in VOLATILE_LOG_KEYS:
                record.pop(key, None)
            lines.append(json.dumps(record))
        return ("\n".join(lines) + "\n").encode("utf-8")
    if name == "SHA256SUMS":
        kept = [line for line in data.decode("utf-8").splitlines()
                if line.split()[-1] not in VOLATILE_FILES]
        return ("\n".join(kept) + "\n").encode("utf-8")
    return data


def digests(run_dir: Path, names) -> dict[str, str]:
    return {name: hashlib.sha256(canonical_bytes(run_dir, name)).hexdigest() for name in names}


def float_bit_files() -> tuple[str, ...]:
    return tuple(f for f in FILES if f.startswith("checkpoints/")) + ("log.jsonl",)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_run_writes_the_same_files(method, quick_synthetic_cl_run):
    _, run_dir = quick_synthetic_cl_run(method)
    got = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert got == sorted(FILES)


@pytest.mark.float_pin
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_exact_files_are_byte_identical(method, quick_synthetic_cl_run):
    _, run_dir = quick_synthetic_cl_run(method)
    got = digests(run_dir, EXACT_FILES)
    differ = sorted(name for name in EXACT_FILES if got[name] != EXACT[name][method])
    assert not differ, f"{method}: {differ} differ from the reference run; got {got}"


@pytest.mark.float_pin
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_float_files_are_byte_identical_in_the_reference_environment(
        method, quick_synthetic_cl_run):
    here = fingerprint()
    if here not in FLOAT_BITS:
        pytest.skip(f"float bits are pinned only for {sorted(FLOAT_BITS)}; this is {here!r}")
    _, run_dir = quick_synthetic_cl_run(method)
    got = digests(run_dir, float_bit_files())
    differ = sorted(name for name in got if got[name] != FLOAT_BITS[here][name][method])
    assert not differ, f"{method}: {differ} differ from the reference run; got {got}"


def test_canonical_bytes_drop_only_the_volatile_parts(tmp_path):
    """Wall-clock fields and env lines go; every other byte change still changes the digest."""
    log = ('{"time": 1.5, "phase": "wtp", "loss": 0.25}\n'
           '{"time": 2.5, "phase": "eval", "acc": [100.0], "seconds": 3.0}\n')
    (tmp_path / "log.jsonl").write_text(log)
    (tmp_path / "SHA256SUMS").write_text("aa  env.json\nbb  log.jsonl\ncc  metrics.json\n")
    assert canonical_bytes(tmp_path, "log.jsonl") == (
        b'{"phase": "wtp", "loss": 0.25}\n{"phase": "eval", "acc": [100.0]}\n')
    assert canonical_bytes(tmp_path, "SHA256SUMS") == b"cc  metrics.json\n"
    before = digests(tmp_path, ("log.jsonl",))
    (tmp_path / "log.jsonl").write_text(log.replace("0.25", "0.26"))
    assert digests(tmp_path, ("log.jsonl",)) != before


@pytest.mark.slow  # imports torch and timm
def test_fingerprint_names_the_cpu_and_every_kernel_knob(monkeypatch):
    """A kernel-narrowing variable or another CPU model gives another fingerprint (so a skip)."""
    for knob in KERNEL_KNOBS:
        monkeypatch.delenv(knob, raising=False)
    base = fingerprint()
    assert _cpu_model() in base
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Sandybridge")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert fingerprint() == base + ", MKL_CBWR=COMPATIBLE, OPENBLAS_CORETYPE=Sandybridge"


if __name__ == "__main__":  # print the digests of a fresh run, to paste above
    import tempfile

    import torch

    from cl.config import resolve_config
    from cl.run.engine import run_experiment

    torch.set_num_threads(1)
    exact, bits = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            out = Path(tmp) / method
            run_experiment(resolve_config("synthetic", method, quick=True), out)
            exact[method] = digests(out, EXACT_FILES)
            bits[method] = digests(out, float_bit_files())
    def by_file(pins: dict[str, dict[str, str]]) -> str:
        table: dict[str, dict[str, str]] = {}
        for method, files in pins.items():
            for name, digest in files.items():
                table.setdefault(name, {})[method] = digest
        return json.dumps(table, indent=4, sort_keys=True)

    print("EXACT: dict[str, dict[str, str]] =", by_file(exact))
    print("FLOAT_BITS entry (replace the entry of this fingerprint, keep the others):")
    print(f"    {fingerprint()!r}: {by_file(bits)},")
