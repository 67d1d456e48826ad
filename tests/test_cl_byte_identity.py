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
        "hide": "0c653e4bb76662960eaaa4a251148c754610fb3d0fcc1dc7a3337e7c57010975",
        "norga": "998156624659b5f873ba833a6cf760898ce030ac346836db47f7daaefcfa8321"
    },
    "accuracy_matrix.csv": {
        "hide": "afeb7db984d5cfb242e8961f63c5a16c32d901e60ace75ab0cfb9c91b39823d0",
        "norga": "4679a860a1fb39521718050e0cf7ab749dabcbc7ce937ede91b40130eb4005d2"
    },
    "accuracy_matrix_before_alignment.csv": {
        "hide": "68cc223dd58e1e6f9a1e511220028791400c046a8540ecfb4aa9257e45e6ac54",
        "norga": "07312d8ea052bece3afa4307f22a8747ceda9badcf7808995e99db3ea008d876"
    },
    "class_order.json": {
        "hide": "6cc28386658ec69dffea7f7b23828edde6eb18d9021d0fe8f3c1001928cd1612",
        "norga": "6cc28386658ec69dffea7f7b23828edde6eb18d9021d0fe8f3c1001928cd1612"
    },
    "config.json": {
        "hide": "bd84825feeeef8bbac0a47f0bf73df30b304c21adb30b919e9d14cd9916ac8a1",
        "norga": "f8f212701bb4945c8bf475e70250baa940ae210a95976494f55c54867a2c4360"
    },
    "metrics.json": {
        "hide": "c218d6a163743377ad25f1167daf89355fea07e4bc6fca90b27f8b74ca531c82",
        "norga": "3fdbeb19bf759180f124e4bd0361c6d7cbe468c83069ae9a5a4fca4cc243f477"
    },
    "task_selection.json": {
        "hide": "1dba51b540a45693990da7a43c44e6b56b5e71cacce21669658752d2344e123c",
        "norga": "d6dc038733790e2c85939d005674f3e16662c9de040b1855e4e597866117c51c"
    }
}
# fingerprint -> file -> method -> sha256; one entry per machine + environment that was pinned
FLOAT_BITS: dict[str, dict[str, dict[str, str]]] = {
    "torch 2.14.1+cu130, timm 1.0.31, numpy 2.4.6, x86_64 AVX2, AuthenticAMD AMD EPYC": {
        "checkpoints/task_0.pt": {
            "hide": "490bf56ced1a4b20f7c6dbd6c607fb3fe647304cd95b8f57543ee32b27a33842",
            "norga": "de332c8882199c66684491c62c6162b1e1990917b5251600bf7369b006d438c6"
        },
        "checkpoints/task_0.pt.sha256": {
            "hide": "3dc3aa742af41d9605668f46335c9fd59b3b31f03e42f5d5cffee78a29fedfec",
            "norga": "fcb596b43fd404f6877308abbfe3a01f0a28cd6773ad8da7307946d8f2bed5ed"
        },
        "checkpoints/task_1.pt": {
            "hide": "ca00591bb97f876dc9348ac374485e02e5ea9cdc4667caa0f4b98200ec043128",
            "norga": "5ed5b4b57406cbb6df9cf3156944614ca9e559951e55c4d923f6d0fc9cba5728"
        },
        "checkpoints/task_1.pt.sha256": {
            "hide": "b4e1308db72abdbe6bda58d1361a8d6560876545c4294fe2d70a7b80097d2f88",
            "norga": "bd3652b69a061f17a88238f8357e62f2290758e091672314838e38b4c711d254"
        },
        "checkpoints/task_2.pt": {
            "hide": "90af0496f3c15f36f6269cdeed280dfc8d3e4bcbe0730d60e948ce39e5103e7a",
            "norga": "0441a8ebe5f70fd5b4d6d5fad6101dcb14a7e1b5efb350d6cd038cc7c40710ca"
        },
        "checkpoints/task_2.pt.sha256": {
            "hide": "3687a4f2af82c2a4912f6c3ed4731bff49ec9ab6fdb04d8b3464b964ab284189",
            "norga": "0f25579f5aff58120a19588f70e00dfb5d1cecbe38d2cafeff43eaaf2abb17b4"
        },
        "checkpoints/task_3.pt": {
            "hide": "12068edf08bda589e9531cdfbe308171d7faa34b0039e830d5a16f560b551f8a",
            "norga": "bb89794cd14cc767554d5d8382b66629f262e88d3c9ef0a74fd09ec31d0b5bed"
        },
        "checkpoints/task_3.pt.sha256": {
            "hide": "b2dd51f63fb609c9e387829b7d60ffdf4807f93c04ed6df5ec6fb3dfb7cdc0cb",
            "norga": "3689b381939ad61c5a2438a82b5d950e2848822ff88078e8d2afa479ae8cbf9b"
        },
        "checkpoints/task_4.pt": {
            "hide": "c0ed6e51f6e6cee8f230ed3afc455d2dee4a620d325f4843055dbdce1d01955e",
            "norga": "e8a877e106f5a4437735495e96004cc125dfdc7b8a13b6ebb0299d66a8fc6fde"
        },
        "checkpoints/task_4.pt.sha256": {
            "hide": "8c0a1695563026d34cf118ad65547646ef847f3891171d43c7400f795d39bced",
            "norga": "0c82f1b73adc286094b9274dd3dedc40f5e6cf780d1a4ebfe2f6640b5928a5d9"
        },
        "log.jsonl": {
            "hide": "30c0e32bb6bb77affa322dbc2e83775dee2cc8a083f91f456bd8091f3ee074af",
            "norga": "f20c12ebe19ced488e6d1667369a0db6b874dc37ee8e1396e07d777da1d27dae"
        }
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
