"""The files of the quick synthetic CL run, byte for byte (sha256), before and after refactors.

The ``EXACT`` digests were taken on ``main`` at ``bde7ffd``, before ``cl/run/engine.py`` and
``cl/backbones/loading.py`` were split into modules with one job (issue 17): moving code between
modules must not move a single byte of what a run writes (``FLOAT_BITS``: at ``d62da4d``). The
run is the one ``experiments/cl.py --dataset synthetic --quick --set keep_checkpoints=all`` makes
(seed 42, one torch thread; every checkpoint kept, as when the pins were taken), shared with
``test_golden_runs.py`` through the ``quick_synthetic_cl_run`` fixture.

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
         "task_selection.json", "epochs.csv", "tasks.csv") + tuple(
             f"checkpoints/task_{t}.pt{ext}" for t in range(5) for ext in ("", ".sha256"))
VOLATILE_FILES = ("env.json", "log.jsonl")  # their SHA256SUMS lines are dropped
VOLATILE_LOG_KEYS = ("time", "seconds")
# digests: file -> method -> sha256 of canonical_bytes
EXACT_FILES = ("SHA256SUMS", "accuracy_matrix.csv", "accuracy_matrix_before_alignment.csv",
               "class_order.json", "config.json", "metrics.json", "task_selection.json")

EXACT: dict[str, dict[str, str]] = {
    "SHA256SUMS": {
        "hide": "1fe020e73278128b86c0b27c2536ad23e4d8523d82a3f84cf55730d70bd6ccbc",
        "norga": "7371b01adb78d6b8b84f1eda558b38337729cba4a9ea520885e43ae6418cc8ba"
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
        "hide": "aa09186ea7d9c7dd8d1d3ba96938282c58ed5339a6762294133c1fc6173ed138",
        "norga": "0597457cffb8b06289d2c08c53a093d4641063f7d70cde3abfe29a6a1bdcae86"
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
            "hide": "b9769448ab3daf2d24fd8e5ee3988d4c01085e86b7aa0e566d27ac584796ad93",
            "norga": "c123a38260c0091dca51072e8615d220833cecc664590687fc0d50dd831144a2"
        },
        "checkpoints/task_0.pt.sha256": {
            "hide": "b802e1285330995fe13a8328da068caffa14a9f9237d80bfafc82769592a9bef",
            "norga": "0bd0a53b948c7f51ffd5f1b6468e458e2333b47a12dc041b590a01cbaa8ccb30"
        },
        "checkpoints/task_1.pt": {
            "hide": "676699a1e4f5218184163c9d0e07701b96bfb78d648854d7b4c1678283392429",
            "norga": "c227954b051dc0c30d750f2991d954c482660448055f1c1a939abbf5e88fc65d"
        },
        "checkpoints/task_1.pt.sha256": {
            "hide": "c2a9a4e44e0f7b86f8921b96906576d76b2d5fa742741de70e7dc5522a4edd97",
            "norga": "5b440256a71887a015ba629cec663881ae5bf26b8ccdea7bdfc2d640c7c396ce"
        },
        "checkpoints/task_2.pt": {
            "hide": "f04ac3139fad7fe976533188be9c9590c2e7dafe982500e46200ea09ad1c9201",
            "norga": "650ee0930880c8cf74e978ede94e822ba78698e10e0d1297174668ffa9465c24"
        },
        "checkpoints/task_2.pt.sha256": {
            "hide": "a210a7e109a33a9c9f2310aa0555acaf3a346e4499d73c28850ab9ccafbd42d6",
            "norga": "e5374a95cab213739eeebd51be3f696ef6aeeda70601f0224418f290e3bbfd7b"
        },
        "checkpoints/task_3.pt": {
            "hide": "154bc7c0bdbe931499acff4a6ac026f315749ca583adc76e206077e2f8643afe",
            "norga": "06186ae1b0b1055d397a60b251aa533ef5405ffc30ba143f34f80ef938348cde"
        },
        "checkpoints/task_3.pt.sha256": {
            "hide": "973500091c71e3c265085ba9ae3bc197c3ce41416528e372aa4c0657f79df43e",
            "norga": "15daf476ad2fdaae11c69a60ebadefcae0713a627d447ada7e52250ede87f076"
        },
        "checkpoints/task_4.pt": {
            "hide": "ca5a6551e344810998271c5b015effcc673836fe4324bc7d863efa6a77916cd7",
            "norga": "2b5afdcf558ada3ac743a097e857e652fd157a5d9ecf06c646aae8b185dfe66a"
        },
        "checkpoints/task_4.pt.sha256": {
            "hide": "3071674a271d0bdb0dbecb63f4e64026dec3037388a4134a8b53c96c2fb9ae43",
            "norga": "ca091d548931b55c87ee9792f020077223df98739495ec05c5f8168e3347c3c5"
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
            run_experiment(resolve_config("synthetic", method, quick=True,
                                          overrides={"keep_checkpoints": "all"}), out)
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
