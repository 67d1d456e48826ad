"""norga-cl input checks: an empty test set is refused before anything is written (an accuracy
over no images is undefined, never 0 %); duplicate --set keys and non-ASCII digits are refused
with one line and exit 2."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cl import cli as cl_cli
from cl.run.engine import evaluate_task

BASE = ["--dataset", "synthetic", "--no-progress", "--epochs", "1", "--set", "tap_epochs=1"]


def _main(argv, capsys) -> tuple[int, list[str]]:
    try:
        code = cl_cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


@pytest.mark.parametrize("argv, words", [
    (["--set", "dataset_options.test_per_class=0"], ["no test images", "test_per_class"]),
    (["--set", "tii_ca_epochs=1", "--set", "tii_ca_epochs=2"], ["tii_ca_epochs", "twice"]),
    (["--set", "tii_ca_epochs=\uff11"], ["non-ASCII digit"]),
    (["--batch-size", "\uff11\uff16"], ["--batch-size", "digits 0-9"]),
    (["--method", "hide", "--set", "stats_method=multi-centroid", "--set", "n_centroids=200"],
     ["n_centroids", "training images", "allowed: 1 to"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, words):
    out = tmp_path / "run"
    code, err = _main([*BASE, *argv, "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1, err
    assert all(w in err[0] for w in words), err[0]
    assert not out.exists()


class _NoMethod:
    def predict(self, x):  # pragma: no cover - never called on an empty loader
        raise AssertionError


def test_accuracy_over_no_images_is_undefined_not_zero():
    empty = DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
                       batch_size=4)
    result = evaluate_task(_NoMethod(), empty, 0, torch.device("cpu"), full=False)
    assert result["n"] == 0 and math.isnan(result["acc"])
