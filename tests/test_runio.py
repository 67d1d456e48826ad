"""Atomic writes, checksum files and checkpoints of cl.run.files, unit by unit: where temporaries
go, which errors are wrapped and how, how ``SHA256SUMS`` lines are parsed, and what a checkpoint may
hold."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cl.run.files import (
    CHECKSUMS_FILE,
    CheckpointError,
    WriteFailedError,
    json_text,
    load_checkpoint,
    read_checksums,
    sha256_hex,
    sidecar_path,
    torch_save_atomic,
    verify_result_file,
    write_bytes_atomic,
    write_json_atomic,
    write_result_file,
)
from norga import io as atomic_io
from norga.matrix import accuracy_matrix_csv, read_accuracy_matrix


def test_atomic_write_creates_missing_parents(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    write_bytes_atomic(target, b"x")
    assert target.read_bytes() == b"x"


def test_temporary_is_a_hidden_sibling_ending_in_tmp(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(Path(src))
        real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "replace", replace)
    write_bytes_atomic(tmp_path / "metrics.json", b"{}")
    (tmp,) = seen
    # same folder (the rename is atomic only within one file system) and the name pattern
    # ``.<name>.<random>.tmp`` that a resume sweeps away
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(".metrics.json.") and tmp.name.endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EACCES, None), "EACCES"),  # no strerror: the errno's name
    (OSError("odd failure"), "odd failure"),  # no errno at all: the message
])
def test_os_errors_become_one_write_failed_error_naming_the_file(tmp_path, monkeypatch, error,
                                                                   reason):
    (tmp_path / "f.txt").write_text("old")

    def fail(src, dst):
        raise error

    monkeypatch.setattr(atomic_io.os, "replace", fail)
    with pytest.raises(WriteFailedError) as info:
        write_bytes_atomic(tmp_path / "f.txt", b"new")
    assert str(info.value).endswith(f"could not write {tmp_path / 'f.txt'}: {reason}; the "
                                    "previous version of f.txt (if any) is intact")
    assert info.value.errno == error.errno
    assert (tmp_path / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # temporary removed


def test_other_errors_pass_through_unwrapped_and_leave_no_temporary(tmp_path):
    with pytest.raises(TypeError):
        write_bytes_atomic(tmp_path / "f.bin", "text, not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_json_text_is_sorted_indented_and_ends_with_a_newline(tmp_path):
    data = {"b": 1, "a": [1, 2], "path": Path("x/y")}
    text = json_text(data)
    assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1,\n  "path": "x/y"\n}\n'
    write_json_atomic(tmp_path / "d.json", data)
    assert (tmp_path / "d.json").read_text() == text
    assert json.loads(text)["path"] == "x/y"


# ---------------------------------------------------------------------------- SHA256SUMS


def _digest(text: str) -> str:
    return sha256_hex(text.encode())


def test_checksum_lines_split_at_the_first_double_space_and_skip_malformed_ones(tmp_path):
    good = _digest("a")
    (tmp_path / CHECKSUMS_FILE).write_text(
        f"{good}  name  with  spaces.json\n"
        f"{'0' * 63}  short-digest.json\n"
        f"{good}  \n"
        "no separator\n"
    )
    assert read_checksums(tmp_path) == {"name  with  spaces.json": good}


def test_result_file_with_a_double_space_in_its_name_verifies(tmp_path):
    write_result_file(tmp_path, "odd  name.csv", "1,2\n")
    assert verify_result_file(tmp_path, "odd  name.csv") is None


def test_without_sha256sums_a_run_is_trusted_but_an_empty_one_lists_nothing(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    assert verify_result_file(tmp_path, "metrics.json") is None  # written before checksums
    (tmp_path / CHECKSUMS_FILE).write_text("")
    assert verify_result_file(tmp_path, "metrics.json") == (
        f"metrics.json has no entry in {CHECKSUMS_FILE}")


def test_unreadable_result_file_is_reported(tmp_path):
    assert verify_result_file(tmp_path, "missing.json").startswith("missing.json is unreadable")


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_keeps_numpy_arrays_and_plain_objects(tmp_path):
    state = {"acc": np.arange(6.0).reshape(2, 3), "cfg": {"seed": 3}, "t": torch.ones(2),
             "gen": torch.Generator().manual_seed(1).get_state()}
    torch_save_atomic(tmp_path / "task_0.pt", state)
    sidecar = sidecar_path(tmp_path / "task_0.pt").read_text()
    assert sidecar == f"{sha256_hex((tmp_path / 'task_0.pt').read_bytes())}  task_0.pt\n"
    back = load_checkpoint(tmp_path / "task_0.pt")
    np.testing.assert_array_equal(back["acc"], state["acc"])
    assert back["cfg"] == {"seed": 3} and torch.equal(back["t"], state["t"])


def test_checkpoint_failures_say_what_is_wrong(tmp_path):
    path = tmp_path / "task_1.pt"
    with pytest.raises(CheckpointError, match=r"^task_1\.pt: no readable checksum file "
                       r"task_1\.pt\.sha256 \(the run was probably killed while saving it\)$"):
        load_checkpoint(path)
    path.mkdir()  # a sidecar, but the checkpoint cannot be read
    sidecar_path(path).write_text(f"{'0' * 64}  task_1.pt\n")
    with pytest.raises(CheckpointError, match=r"^task_1\.pt: unreadable \(.+\)$"):
        load_checkpoint(path)
    path.rmdir()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"^task_1\.pt: SHA-256 mismatch \(16 bytes; "
                       r"corrupted or truncated\)$"):
        load_checkpoint(path)
    sidecar_path(path).write_text(f"{sha256_hex(b'not a checkpoint')}  task_1.pt\n")
    with pytest.raises(CheckpointError, match=r"^task_1\.pt: cannot be loaded \(.*not a "
                       r"readable PyTorch checkpoint.*\)$") as e:
        load_checkpoint(path)
    assert "NoneType" not in str(e.value)


def test_accuracy_matrix_csv_round_trip_with_unseen_tasks(tmp_path):
    acc = np.array([[90.0, np.nan], [80.5, 70.25]])
    (tmp_path / "m.csv").write_text(accuracy_matrix_csv(acc))
    back = read_accuracy_matrix(tmp_path / "m.csv")
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, acc)
