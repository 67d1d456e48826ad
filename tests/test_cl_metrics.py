"""FA / CA / FM / backward transfer from hand-written accuracy matrices; CSV format."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cl import metrics as M
from norga.matrix import accuracy_matrix_csv, read_accuracy_matrix

nan = math.nan
# acc[t, i]: accuracy on task i after training task t
A = np.array([[90.0, nan, nan], [80.0, 70.0, nan], [60.0, 65.0, 50.0]])
# the best accuracy on a task is reached after a later task (max is not the diagonal)
B = np.array([[50.0, nan, nan], [70.0, 80.0, nan], [60.0, 75.0, 90.0]])


def test_known_answers() -> None:
    assert M.final_average_accuracy(A) == pytest.approx((60 + 65 + 50) / 3)
    assert M.cumulative_average_accuracy(A) == pytest.approx((90 + 75 + 175 / 3) / 3)
    assert M.forgetting(A) == pytest.approx(((90 - 60) + (70 - 65)) / 2)
    assert M.backward_transfer(A) == pytest.approx(((60 - 90) + (65 - 70)) / 2)
    assert M.forgetting(B) == pytest.approx(((70 - 60) + (80 - 75)) / 2)
    assert M.backward_transfer(B) == pytest.approx(((60 - 50) + (75 - 80)) / 2)


def test_single_task_and_shape_check() -> None:
    one = np.array([[42.0]])
    assert M.summarize(one) == {"FA": 42.0, "CA": 42.0, "FM": 0.0, "BWT": 0.0}
    with pytest.raises(ValueError, match="square"):
        M.forgetting(np.zeros((2, 3)))


def test_csv_round_trip_with_empty_cells() -> None:
    text = accuracy_matrix_csv(A)
    lines = text.splitlines()
    assert lines[0] == "after_task,task_0,task_1,task_2"
    assert lines[1] == "0,90.0000,,"
    back = np.genfromtxt(text.splitlines()[1:], delimiter=",")[:, 1:]
    np.testing.assert_array_equal(np.isnan(back), np.isnan(A))
    np.testing.assert_allclose(back[~np.isnan(back)], A[~np.isnan(A)])


def test_csv_reader(tmp_path) -> None:
    path = tmp_path / "acc.csv"
    path.write_text(accuracy_matrix_csv(B))
    np.testing.assert_array_equal(read_accuracy_matrix(path), B)


def test_integer_matrices_are_read_as_floats() -> None:
    """Counts-like integer input (even unsigned) gives the same numbers: no wrap-around in
    differences such as BWT's ``acc[T-1, i] - acc[i, i]``."""
    ints = np.array([[90, 0, 0], [80, 70, 0], [60, 65, 50]], dtype=np.uint8)
    floats = ints.astype(float)
    assert M.summarize(ints) == M.summarize(floats)
    assert M.backward_transfer(ints) == pytest.approx(((60 - 90) + (65 - 70)) / 2)
