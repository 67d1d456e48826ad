"""The files of the quick synthetic CL run, byte for byte (sha256), before and after refactors.

The digests below were taken on ``main`` at ``bde7ffd``, before ``cl/run/engine.py`` and
``cl/backbones/loading.py`` were split into modules with one job (issue 17): moving code between
modules must not move a single byte of what a run writes. The run is the one
``experiments/cl.py --dataset synthetic --quick --set keep_checkpoints=all`` makes (seed 42, one
torch thread; every checkpoint kept, as when the pins were taken), shared with
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
         "task_selection.json", "epochs.csv", "tasks.csv") + tuple(
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
FINGERPRINT = 'torch 2.14.1+cu130, timm 1.0.31, numpy 2.4.6, x86_64 AVX512'
FLOAT_BITS: dict[str, dict[str, str]] = {
    "checkpoints/task_0.pt": {
        "hide": "11fd5b0ba033018a6f20a4262e9c7bd6f88ed9b9ac9f72e4004a3e60b5753247",
        "norga": "6211c3850d2af3d492b8942bc9d820e629269e0e2adf2d86230445e8eb326110"
    },
    "checkpoints/task_0.pt.sha256": {
        "hide": "88679e193d887f9b334d9e68cdd42acc7570bbec6833a0d8fea51515882f3801",
        "norga": "cbfd253de6baed185dae60a8d30a7fe219e0fb45708dc64961fecc1a73240e2a"
    },
    "checkpoints/task_1.pt": {
        "hide": "291f9b539cdecc17fd85813ffe1ce7c611fd038813ebba08de83d51f23d8ad1d",
        "norga": "7c9b8c954e58e2e7236a02978e7769df5f7f83a331695f3f8538f8eb3d9403a2"
    },
    "checkpoints/task_1.pt.sha256": {
        "hide": "d6b56a17869ba47210446b50f0748c52e60ab8f68736894a0fc26a0b161a44bc",
        "norga": "a29761907ba2fb2af51a6ca560923298315833d90aa98112ea6f508566d38de6"
    },
    "checkpoints/task_2.pt": {
        "hide": "6a3ef368982d2e03ef76467f84e42486e1efb39e1d669be1004ce9a354e31cda",
        "norga": "233266f45f5caf1df615b9b0dc38b7cc5c59c6dd9a6da0caa23e35bbbec8a9f3"
    },
    "checkpoints/task_2.pt.sha256": {
        "hide": "1672d813a042dc5189eaa8b8962b1944866f6115f654fc58f3fd59a1ab3d0e1e",
        "norga": "3c515d33d6e0e34be6f38d51d7cdccc7725fa55f3413f2525735a65ebe9e2879"
    },
    "checkpoints/task_3.pt": {
        "hide": "3b1cb7b4d75395343ccbb6d56accd7923c7c7eb6b1c904236d98aed9374d1b5c",
        "norga": "dfc59cbf124148ef4fda3f7e4aed2cab82ce1e49416e205e13cf7445601e9e06"
    },
    "checkpoints/task_3.pt.sha256": {
        "hide": "e674104b7ca565415ecc71b302f92ee0e7d5b5b21f50cdba8888042b330610da",
        "norga": "e83ae554c2ab2225bde035fedc7f21ed9f73169b99e0ff6e6a729949d7e1a260"
    },
    "checkpoints/task_4.pt": {
        "hide": "34fa4fc64d9810ef6db199b8aceb70a0c885fe764f3bc24ba86188236ac2ed7c",
        "norga": "0600b68c05cb3e75d92b68a25c52bbe68eeffc7b04066ef83e9dc0e6be90b0bd"
    },
    "checkpoints/task_4.pt.sha256": {
        "hide": "0ca5af7fa5d147a6635ffd7df36b5584f58586265b848818f4aadf9a6bda2e68",
        "norga": "8afc565cb89adee19f4d418bec93278439a893707070e91edf9f2fc34fedd26a"
    },
    "log.jsonl": {
        "hide": "3193b545584b95066672ea7438b871aa157c042eefc22d35b6799efc46118929",
        "norga": "26b10a5d730cb7b9611e83cde70407f36ee5f2b6da640149f016862204ba6dac"
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
    print("FINGERPRINT =", repr(fingerprint()))
    print("FLOAT_BITS: dict[str, dict[str, str]] =", by_file(bits))
