"""The engine's typed records: the accuracy log, the checkpoint state and the resume decision.

References are hand-written: the matrices by hand, the checkpoint's key order as every
checkpoint written so far has it (the key order is part of a checkpoint's bytes), the resume
decisions as the run directory's rules state them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cl_engine_helpers import tiny_cfg

from cl.run.accuracy_log import AccuracyLog, as_float_matrix
from cl.run.directory import ResumeDecision, TaskState, _prepare
from cl.run.files import torch_save_atomic, write_result_file

NAN = math.nan
# the checkpoint's keys, in the order of every checkpoint written so far
CHECKPOINT_KEYS = ["task", "method", "loader_gen", "acc", "tii", "til", "til_oracle",
                   "acc_before", "config", "has_alignment", "task_selection", "torch_rng"]


def _rows(acc, tii, til, oracle) -> dict[str, np.ndarray]:
    return {k: np.array(v, float) for k, v in
            (("acc", acc), ("tii", tii), ("til", til), ("til_oracle", oracle))}


def _two_task_log() -> AccuracyLog:
    log = AccuracyLog.empty(3)
    log.record_task(_rows([90, NAN, NAN], [100, NAN, NAN], [95, NAN, NAN], [96, NAN, NAN]),
                    np.array([90, NAN, NAN]))
    log.record_task(_rows([70, 60, NAN], [80, 75, NAN], [85, 82, NAN], [88, 84, NAN]),
                    np.array([65, 58, NAN]))
    return log


def _equal(a: np.ndarray, b) -> None:
    np.testing.assert_array_equal(a, np.array(b, float))


def test_record_task_appends_one_row_per_matrix():
    log = AccuracyLog.empty(3)
    assert log.finished_tasks == 0 and all(m.shape == (0, 3) for m in log.matrices().values())
    log.record_task(_rows([90, NAN, NAN], [100, NAN, NAN], [95, NAN, NAN], [96, NAN, NAN]),
                    np.array([90, NAN, NAN]))
    first_acc = log.acc
    log.record_task(_rows([70, 60, NAN], [80, 75, NAN], [85, 82, NAN], [88, 84, NAN]),
                    np.array([65, 58, NAN]))
    assert log.finished_tasks == 2
    _equal(log.acc, [[90, NAN, NAN], [70, 60, NAN]])
    _equal(log.tii, [[100, NAN, NAN], [80, 75, NAN]])
    _equal(log.til, [[95, NAN, NAN], [85, 82, NAN]])
    _equal(log.til_oracle, [[96, NAN, NAN], [88, 84, NAN]])
    _equal(log.acc_before, [[90, NAN, NAN], [65, 58, NAN]])
    _equal(first_acc, [[90, NAN, NAN]])  # a matrix handed out earlier keeps its rows
    assert list(log.matrices()) == ["acc", "tii", "til", "til_oracle", "acc_before"]
    assert log.matrices()["acc_before"] is log.acc_before


def test_state_round_trip_is_float64_tensors_in_checkpoint_order():
    log = _two_task_log()
    state = log.to_state()
    assert list(state) == CHECKPOINT_KEYS[3:8]
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in state.values())
    back = AccuracyLog.from_state(state)
    for key, matrix in log.matrices().items():
        _equal(back.matrices()[key], matrix)
        assert back.matrices()[key] is not matrix


def test_older_checkpoints_numpy_arrays_and_no_newer_matrices_still_load():
    """Checkpoints written before the matrices were tensors and before the oracle and
    before-alignment matrices existed."""
    old = {"acc": np.array([[50.0, NAN]]), "tii": np.array([[100.0, NAN]]),
           "til": np.array([[60.0, NAN]])}
    log = AccuracyLog.from_state(old)
    _equal(log.acc, [[50, NAN]])
    _equal(log.tii, [[100, NAN]])
    _equal(log.til, [[60, NAN]])
    assert log.til_oracle.shape == log.acc_before.shape == (1, 2)
    assert np.isnan(log.til_oracle).all() and np.isnan(log.acc_before).all()
    assert as_float_matrix(torch.tensor([[1.5]], dtype=torch.float32)).dtype == np.float64


class _Method:
    def state_dict(self):
        return {"method": "toy", "w": torch.ones(2)}

    def run_files(self):
        return {}


def test_task_state_checkpoint_keeps_every_key_in_order():
    gen = torch.Generator().manual_seed(3)
    state = TaskState(1, _Method(), gen, _two_task_log(), {"seed": 3}, True, None)
    ckpt = state.checkpoint()
    assert list(ckpt) == CHECKPOINT_KEYS
    assert ckpt["task"] == 1 and ckpt["config"] == {"seed": 3} and ckpt["has_alignment"] is True
    assert torch.equal(ckpt["method"]["w"], torch.ones(2))
    assert torch.equal(ckpt["loader_gen"], gen.get_state())
    _equal(ckpt["acc_before"].nan_to_num(-1).numpy(), [[90, -1, -1], [65, 58, -1]])
    assert torch.equal(ckpt["torch_rng"], torch.get_rng_state())


def test_resume_decision_defaults_and_start_task():
    fresh = ResumeDecision()
    assert fresh.finished is None and not fresh.staging and not fresh.resumes
    assert fresh.start_task == 0 and fresh.skipped == ()
    after_2 = ResumeDecision(task=2)
    assert after_2.resumes and after_2.start_task == 3
    with pytest.raises(AttributeError):
        after_2.task = 3  # type: ignore[misc]  # frozen


def test_prepare_decides_fresh_staging_and_resume(tmp_path):
    cfg = tiny_cfg("l2p")
    out = tmp_path / "run"
    assert _prepare(out, cfg, False, 3) == ResumeDecision()
    write_result_file(out, "config.json", "{}")
    assert _prepare(out, cfg, True, 3) == ResumeDecision(staging=True)

    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir()
    selection = {"kind": "task_selection", "after_task": 1}
    torch_save_atomic(ckpt_dir / "task_0.pt", {"task": 0, "task_selection": None})
    torch_save_atomic(ckpt_dir / "task_1.pt", {"task": 1, "task_selection": selection})
    (ckpt_dir / "task_2.pt").write_bytes(b"cut short")  # no sidecar: rejected, set aside
    (out / "config.json").unlink()  # (no saved configuration to compare with)
    decision = _prepare(out, cfg, False, 3)
    assert decision.task == 1 and decision.start_task == 2 and decision.resumes
    assert decision.checkpoint_path == ckpt_dir / "task_1.pt"
    assert decision.checkpoint == {"task": 1, "task_selection": selection}
    assert decision.task_selection == selection and not decision.staging
    assert len(decision.skipped) == 1 and decision.skipped[0].startswith("task_2.pt: no readable")
    assert (ckpt_dir / "task_2.pt.corrupt").exists()
