"""The files of the quick synthetic CL run, byte for byte (sha256), before and after refactors.

The digests below were taken on ``main`` at ``bde7ffd``, before ``cl/run/engine.py`` and
``cl/backbones/loading.py`` were split into modules with one job (issue 17): moving code between
modules must not move a single byte of what a run writes. Re-pinned for a deliberate change of
the output: the TII adapter's official init (issue 23), on an AVX2 machine (``FINGERPRINT``).
The run is the one
``experiments/cl.py --dataset synthetic --quick`` makes (seed 42, one torch thread), shared with
``test_golden_runs.py`` through the ``quick_synthetic_cl_run`` fixture.

Two kinds of files:

* ``EXACT``: counts and the numbers made from them (accuracy matrices, metrics, class order,
  configuration, prompt selection counts, ``SHA256SUMS`` without its ``env.json`` and
  ``log.jsonl`` lines). They do not depend on floating-point summation order (the golden-run
  test pins the same accuracies exactly), so they are checked everywhere.
* ``FLOAT_BITS``: the checkpoints and ``log.jsonl`` (losses). Their bits depend on the torch /
  timm / NumPy build and on the CPU kernels torch dispatches to, so they are checked only in the
  environment named by ``FINGERPRINT`` (elsewhere the test is skipped, and says why).

Left out: ``env.json`` (git commit, package versions, platform) and ``.lock``; in
``log.jsonl`` the wall-clock fields ``time`` and ``seconds`` are dropped before hashing.

To print new digests (only for a deliberate change of the output, stated in the commit message):
``PYTHONPATH=. python tests/test_cl_byte_identity.py``.
"""

from __future__ import annotations

import hashlib
import json
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
        "hide": "e0a0f3f10ac7819703c3896e927f2310a9774ca3bd6500dfd6664f81b1e7d00f",
        "norga": "e15b6002ba8f7214b820518ae66d06bbc36ba26874688f401f4fb4f9a31c6eea"
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
        "hide": "dc3b1f2c45b688b7f352a342b352121dcec3e4161711c2e7085c209a4087c68e",
        "norga": "bb11929541933f1fbf1be06e54f120b4d38b4ab2f386799c3f602813b745ac70"
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
FINGERPRINT = 'torch 2.14.1+cu130, timm 1.0.31, numpy 2.4.6, x86_64 AVX2'
FLOAT_BITS: dict[str, dict[str, str]] = {
    "checkpoints/task_0.pt": {
        "hide": "c531a07c88ab4a7d5ccdf3c42704287321fd15429cf32ce8191af67d18f0daf9",
        "norga": "2aa9bbaa8765d7763d289f54feb75b42d612977a29ee1f44e4d2d347263bbd78"
    },
    "checkpoints/task_0.pt.sha256": {
        "hide": "978f76d236fad3a520feb2fc6b923da1b56331d2eec87adc5a39327b06e7b245",
        "norga": "533a274cf8a8f524f4f8d99eaa822c48b1d8de9fd347a1113cd9429a99583ade"
    },
    "checkpoints/task_1.pt": {
        "hide": "e85c0157aa1aad5cbf02cd4194cc1acedefe80b55a0ffbcaaf89614f1dcac432",
        "norga": "db37db3b6f53885ca4c46f57f9825f310a7efbd846c35bc02b5068dbfade5c85"
    },
    "checkpoints/task_1.pt.sha256": {
        "hide": "981fde2e0d0625806178dce5de7806bc4aec24fa562831da9392259f8a78a1f7",
        "norga": "0417437fa1691b1408900211eb1c0e63995654f3c9df4414574ae152ef727256"
    },
    "checkpoints/task_2.pt": {
        "hide": "30acbc46a861d9259bc1cc82d1da7ca6a5633c23d671d27332037d2b2e8887b3",
        "norga": "f23f588b91e5f083edac190f273c4aaafbec00386597f5a700cbd188b7885f48"
    },
    "checkpoints/task_2.pt.sha256": {
        "hide": "2807f712a6a77f8ef35fa6b411445334ab0c9ade30c744c327119dd66e17ae7e",
        "norga": "2f30e7a915d29d05bb7cc793f931b4249b7d3480db94ebe0a5ef1ee3fbc191bb"
    },
    "checkpoints/task_3.pt": {
        "hide": "068ea90bbbde53737560ff4e2a0029b8d1248dac2018c70865860169546a3545",
        "norga": "1455e3cfe040282e1ba77f99730d0eef8a210245ca115f557aadb9d54f76b976"
    },
    "checkpoints/task_3.pt.sha256": {
        "hide": "aaa500fdb33fbe814d3f712f99d02e77be4892a0e26f1bf0671957228267cfcd",
        "norga": "ee477e58dc0c99b600f976f5de1740bdaf87de98bd2d876eb48becee68a00bd8"
    },
    "checkpoints/task_4.pt": {
        "hide": "1fbf126dfae834f08e1902417a0c417c7658506a8f8ee5d19a367d082e183fa3",
        "norga": "d87e578fe18e76f353ec3d5358efe0dea1e302731615f1af1c66a64f62f27f42"
    },
    "checkpoints/task_4.pt.sha256": {
        "hide": "712fd0d239bc5458373b74dfe844e5d0efc65a26953c14bb848530dcce17199f",
        "norga": "d357a252dab0b7247c71caed58cfff5d503e12301cc4da6296599100242eeb80"
    },
    "log.jsonl": {
        "hide": "30c0e32bb6bb77affa322dbc2e83775dee2cc8a083f91f456bd8091f3ee074af",
        "norga": "f20c12ebe19ced488e6d1667369a0db6b874dc37ee8e1396e07d777da1d27dae"
    }
}


def fingerprint() -> str:
    """The build and CPU facts that fix the bits of a float computation on the CPU."""
    import numpy
    import timm
    import torch

    return (f"torch {torch.__version__}, timm {timm.__version__}, numpy {numpy.__version__}, "
            f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}")


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


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_exact_files_are_byte_identical(method, quick_synthetic_cl_run):
    _, run_dir = quick_synthetic_cl_run(method)
    got = digests(run_dir, EXACT_FILES)
    differ = sorted(name for name in EXACT_FILES if got[name] != EXACT[name][method])
    assert not differ, f"{method}: {differ} differ from the reference run; got {got}"


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_float_files_are_byte_identical_in_the_reference_environment(
        method, quick_synthetic_cl_run):
    here = fingerprint()
    if here != FINGERPRINT:
        pytest.skip(f"float bits pinned for {FINGERPRINT!r}, this is {here!r}")
    _, run_dir = quick_synthetic_cl_run(method)
    got = digests(run_dir, float_bit_files())
    differ = sorted(name for name in got if got[name] != FLOAT_BITS[name][method])
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
    print("FINGERPRINT =", repr(fingerprint()))
    print("FLOAT_BITS: dict[str, dict[str, str]] =", by_file(bits))
