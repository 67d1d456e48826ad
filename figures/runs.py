"""Read saved run directories (rates and CL) into plain typed Python objects.

``figures`` never imports ``moe_theory`` or ``cl``; it reads the files those packages write.
Every reader raises :class:`RunFormatError` with a one-line, human-readable message when a
file is missing, corrupt or from an unsupported version, so that a CLI can print it and move
on instead of showing a traceback.

Formats read
------------
Rates run (``experiments/rates.py``): ``config.json`` (``kind == "rates"``), ``fits.csv`` (one
row per least-squares fit), ``summary.json`` (``kind == "rates"``, ``version == 1``,
``settings[setting][gate]`` entries with the fitted slopes) and optionally ``mechanism.json``.

CL run (``experiments/cl.py``): ``config.json`` (``kind == "cl"``), ``accuracy_matrix.csv``
(``after_task,task_0,...``; empty cells above the diagonal), ``metrics.json`` and optionally
``expert_frequency.json``::

    {"kind": "expert_frequency", "version": 1,
     "layer_ids": [0, 1, 2, 3, 4, 5],          # optional, default 0..L-1
     "after_task": 9,                          # optional: task after which it was counted
     "layers": [[[c_00, c_01, ...],            # layer 0, head 0: one count per expert
                 [c_10, c_11, ...], ...],      # layer 0, head 1 ...
                ...]}                          # one entry per prompted layer

Counts are non-negative (raw selection counts or frequencies); plots normalise them per
(layer, head) so that each row sums to one.

Optional as well: ``accuracy_matrix_before_alignment.csv`` (same format as the matrix, just
before the head alignment) and ``task_selection.json``::

    {"kind": "task_selection", "version": 1, "method": "norga", "after_task": 4,
     "prompts": [[n_00, n_01, ...], ...],      # test samples of task i per prompt j, or null
     "experts": [[[[c, ...], ...], ...], ...], # task i, layer l, head h, expert e, or null
     "layer_ids": [0, 1, 2, 3, 4, 5]}
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from figures.names import canonical_backbone, canonical_dataset, canonical_method
from norga.io import verify_checksums
from norga.matrix import MatrixFormatError
from norga.matrix import read_accuracy_matrix as read_matrix_file

logger = logging.getLogger(__name__)

RunKind = Literal["rates", "cl"]

#: summary.json versions this package can read.
RATES_SUMMARY_VERSIONS = (1, 2)

#: Columns of fits.csv that the figures need.
REQUIRED_FIT_COLUMNS = ("setting", "gate", "n", "replicate", "voronoi_loss", "l2_error")

_INT_COLUMNS = {"n", "replicate", "n_iter"}
_BOOL_COLUMNS = {"converged", "at_bound"}
_STR_COLUMNS = {"setting", "gate", "activation", "expert"}


class RunFormatError(ValueError):
    """A run directory is missing a file, holds a corrupt file or comes from another version.

    ``str(error)`` is one line naming the run directory and the problem.
    """


@dataclass
class RatesRun:
    """The saved results of one ``experiments/rates.py`` run."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    mechanism: dict[str, Any] | None = None

    @property
    def settings(self) -> list[str]:
        """Settings present in the fits, in order of first appearance."""
        return list(dict.fromkeys(r["setting"] for r in self.records))

    def records_for(self, setting: str) -> list[dict[str, Any]]:
        """Fit rows of one setting."""
        return [r for r in self.records if r["setting"] == setting]

    def summary_for(self, setting: str) -> dict[str, Any]:
        """``summary["settings"][setting]`` (an empty dict when the summary lacks it)."""
        return dict(self.summary.get("settings", {}).get(setting, {}))


@dataclass
class CLRun:
    """The saved results of one ``experiments/cl.py`` run."""

    path: Path
    config: dict[str, Any]
    accuracy_matrix: np.ndarray
    metrics: dict[str, Any]
    expert_frequency: dict[str, Any] | None = None
    env: dict[str, Any] = field(default_factory=dict)
    accuracy_before_alignment: np.ndarray | None = None
    task_selection: dict[str, Any] | None = None

    def _get(self, key: str) -> Any:
        return self.metrics.get(key, self.config.get(key))

    @property
    def method(self) -> str:
        """Canonical method name."""
        return canonical_method(self._get("method") or "unknown")

    @property
    def dataset(self) -> str:
        """Canonical dataset name."""
        return canonical_dataset(self._get("dataset") or "unknown")

    @property
    def backbone(self) -> str:
        """Canonical backbone name."""
        return canonical_backbone(self._get("backbone") or "unknown")

    @property
    def seed(self) -> int | None:
        """Seed of the run (``None`` when not recorded)."""
        seed = self._get("seed")
        return None if seed is None else int(seed)

    @property
    def gate_act(self) -> str | None:
        """NoRGa activation (``tanh``/``sigmoid``/``gelu``) when recorded, else ``None`` (in
        ``config.json`` an option of the method, ``method_options.gate_act``; a run from before
        options were typed has it at the top level)."""
        options = self.config.get("method_options")
        nested = options.get("gate_act") if isinstance(options, dict) else None
        act = self.metrics.get("gate_act", self.config.get("gate_act", nested))
        return None if act in (None, "", "none") else str(act).lower()

    @property
    def n_tasks(self) -> int:
        """Number of tasks (columns of the accuracy matrix)."""
        return int(self.accuracy_matrix.shape[1])

    @property
    def finished(self) -> bool:
        """Whether every task has a row in the accuracy matrix."""
        return self.accuracy_matrix.shape[0] == self.accuracy_matrix.shape[1]


# ----------------------------------------------------------------------------- helpers


def _read_json(path: Path, run: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunFormatError(f"{run}: missing {path.name}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFormatError(f"{run}: {path.name} is not valid JSON ({_first_line(err)})") from err
    if not isinstance(data, dict):
        raise RunFormatError(f"{run}: {path.name} must hold a JSON object")
    return data


def _verify(run: Path, names: tuple[str, ...]) -> None:
    """Refuse a run whose result files do not match its ``SHA256SUMS`` (edited or damaged)."""
    problem = verify_checksums(run, names)
    if problem:
        raise RunFormatError(f"{run}: {problem} (re-running the run's command recomputes "
                             "its results from its checkpoints or cache)")


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_cell(column: str, text: str) -> Any:
    if column in _STR_COLUMNS:
        return text
    if column in _BOOL_COLUMNS:
        return _parse_bool(text)
    if column in _INT_COLUMNS:
        return int(float(text))  # tolerate "1000.0" written by float formatters
    try:
        return float(text) if text.strip() != "" else math.nan
    except ValueError:
        return text


# ----------------------------------------------------------------------------- rates runs


def read_fits_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read ``fits.csv`` into typed dict rows.

    ``n``, ``replicate`` and ``n_iter`` become ``int``; ``converged`` and ``at_bound`` become
    ``bool``; ``setting``, ``gate``, ``activation`` and ``expert`` stay ``str``; every other
    column becomes ``float`` (``nan`` for an empty cell) or stays ``str`` if it is not numeric.

    Raises
    ------
    RunFormatError
        When the file is missing, a required column is absent or a cell cannot be parsed.
    """
    path = Path(path)
    run = path.parent
    if not path.is_file():
        raise RunFormatError(f"{run}: missing {path.name}")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_FIT_COLUMNS if c not in columns]
            if missing:
                raise RunFormatError(
                    f"{run}: {path.name} lacks column(s) {', '.join(missing)} "
                    "(written by an older rates.py?)"
                )
            rows = []
            for lineno, raw in enumerate(reader, start=2):
                try:
                    rows.append({k: _parse_cell(k, v or "") for k, v in raw.items() if k})
                except (ValueError, TypeError, OverflowError) as err:
                    raise RunFormatError(
                        f"{run}: {path.name} line {lineno}: {_first_line(err)}"
                    ) from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RunFormatError(f"{run}: cannot read {path.name} ({_first_line(err)})") from err
    if not rows:
        raise RunFormatError(f"{run}: {path.name} has no rows")
    return rows


def read_rates_run(path: str | os.PathLike[str]) -> RatesRun:
    """Read a rates run directory.

    Parameters
    ----------
    path:
        Directory written by ``experiments/rates.py``.

    Returns
    -------
    RatesRun

    Raises
    ------
    RunFormatError
        With a one-line message when a file is missing, corrupt or of an unsupported version.
    """
    run = Path(path)
    if not run.is_dir():
        raise RunFormatError(f"{run}: not a directory")
    config = _read_json(run / "config.json", run) if (run / "config.json").exists() else {}
    if config and config.get("kind", "rates") != "rates":
        raise RunFormatError(f"{run}: config.json kind is {config.get('kind')!r}, not 'rates'")
    summary = _read_json(run / "summary.json", run)
    version = summary.get("version")
    if summary.get("kind") != "rates" or version not in RATES_SUMMARY_VERSIONS:
        raise RunFormatError(
            f"{run}: summary.json has kind={summary.get('kind')!r} version={version!r}; "
            f"this figures package reads kind='rates' version "
            f"{'/'.join(map(str, RATES_SUMMARY_VERSIONS))} (re-run experiments/rates.py)"
        )
    if not isinstance(summary.get("settings"), dict):
        raise RunFormatError(f"{run}: summary.json lacks a 'settings' object")
    _verify(run, ("config.json", "summary.json", "fits.csv", "mechanism.json"))
    records = read_fits_csv(run / "fits.csv")
    mechanism = None
    if (run / "mechanism.json").exists():
        mechanism = _read_json(run / "mechanism.json", run)
    return RatesRun(path=run, config=config, records=records, summary=summary, mechanism=mechanism)


# ----------------------------------------------------------------------------- CL runs


def read_accuracy_matrix(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``accuracy_matrix.csv`` into an array ``A[t, i]`` (row: after task t; column: task i).

    Empty cells (tasks not seen yet) become ``nan``. The array has one row per finished task
    and one column per task (:func:`norga.matrix.parse_accuracy_matrix`).

    Raises
    ------
    RunFormatError
        When the file is missing, has a wrong header or a non-numeric cell.
    """
    path = Path(path)
    run = path.parent
    if not path.is_file():
        raise RunFormatError(f"{run}: missing {path.name}")
    try:
        return read_matrix_file(path)
    except (OSError, UnicodeDecodeError) as err:
        raise RunFormatError(f"{run}: cannot read {path.name} ({_first_line(err)})") from err
    except MatrixFormatError as err:
        raise RunFormatError(f"{run}: {path.name} {err}") from err


def read_cl_run(path: str | os.PathLike[str]) -> CLRun:
    """Read a CL run directory.

    Parameters
    ----------
    path:
        Directory written by ``experiments/cl.py``.

    Returns
    -------
    CLRun

    Raises
    ------
    RunFormatError
        With a one-line message when a required file is missing or corrupt.
    """
    run = Path(path)
    if not run.is_dir():
        raise RunFormatError(f"{run}: not a directory")
    config = _read_json(run / "config.json", run) if (run / "config.json").exists() else {}
    if config and config.get("kind", "cl") != "cl":
        raise RunFormatError(f"{run}: config.json kind is {config.get('kind')!r}, not 'cl'")
    metrics = _read_json(run / "metrics.json", run)
    missing = [k for k in ("FA", "CA", "FM") if k not in metrics]
    if missing:
        raise RunFormatError(f"{run}: metrics.json lacks {', '.join(missing)} "
                             "(unfinished run or older cl.py?)")
    for key in ("method", "dataset"):
        if key not in metrics and key not in config:
            raise RunFormatError(f"{run}: neither metrics.json nor config.json names the {key}")
    _verify(run, ("config.json", "metrics.json", "accuracy_matrix.csv", "env.json",
                  "expert_frequency.json", "accuracy_matrix_before_alignment.csv",
                  "task_selection.json"))
    _check_metrics(metrics, config, run)
    matrix = read_accuracy_matrix(run / "accuracy_matrix.csv")
    env = _read_json(run / "env.json", run) if (run / "env.json").exists() else {}
    freq = None
    if (run / "expert_frequency.json").exists():
        freq = _read_json(run / "expert_frequency.json", run)
        _check_expert_frequency(freq, run)
    before = None
    if (run / "accuracy_matrix_before_alignment.csv").exists():
        before = read_accuracy_matrix(run / "accuracy_matrix_before_alignment.csv")
    selection = None
    if (run / "task_selection.json").exists():
        selection = _read_json(run / "task_selection.json", run)
        if selection.get("kind") != "task_selection" or selection.get("version") != 1:
            raise RunFormatError(f"{run}: task_selection.json is not kind task_selection, "
                                 "version 1")
        _check_task_selection(selection, run)
    return CLRun(path=run, config=config, accuracy_matrix=matrix, metrics=metrics,
                 expert_frequency=freq, env=env, accuracy_before_alignment=before,
                 task_selection=selection)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_metrics(metrics: dict[str, Any], config: dict[str, Any], run: Path) -> None:
    """Refuse values the figures cannot use (a hand-edited ``FA = "abc"``, ``seed = "abc"``)."""
    for key in ("FA", "CA", "FM"):
        value = metrics[key]
        if value is not None and not (_is_number(value) and -1000.0 <= value <= 1000.0):
            raise RunFormatError(f"{run}: metrics.json {key} is {value!r}; expected a finite "
                                 "percentage or null")
    for source, data in (("metrics.json", metrics), ("config.json", config)):
        for key in ("method", "dataset", "backbone", "gate_act"):
            if key in data and data[key] is not None and not isinstance(data[key], str):
                raise RunFormatError(f"{run}: {source} {key} is {data[key]!r}; expected a name")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RunFormatError(f"{run}: {source} seed is {seed!r}; expected an integer")


def _rectangular(value: Any, depth: int) -> bool:
    """Whether ``value`` is a non-ragged ``depth``-deep nest of non-negative finite numbers."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):  # ragged or not numbers
        return False
    return array.ndim == depth and bool(np.all(np.isfinite(array))) and bool(np.all(array >= 0))


def _check_task_selection(selection: dict[str, Any], run: Path) -> None:
    for key, depth in (("prompts", 2), ("experts", 4)):
        value = selection.get(key)
        if value is not None and not _rectangular(value, depth):
            raise RunFormatError(f"{run}: task_selection.json {key!r} must be a {depth}-level "
                                 "table of non-negative counts, or null")


def _check_expert_frequency(freq: dict[str, Any], run: Path) -> None:
    layers = freq.get("layers")
    try:
        arrays = [np.asarray(layer, dtype=float) for layer in layers]  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        raise RunFormatError(f"{run}: expert_frequency.json 'layers' must be "
                             "[layer][head][expert] numbers") from err
    if not arrays or any(a.ndim != 2 or a.size == 0 or np.any(a < 0) for a in arrays):
        raise RunFormatError(f"{run}: expert_frequency.json 'layers' must be non-empty "
                             "[layer][head][expert] non-negative numbers")


# ----------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class FoundRun:
    """A run directory found under a results root, with its kind."""

    path: Path
    kind: RunKind


def detect_kind(path: str | os.PathLike[str]) -> RunKind | None:
    """Kind of a run directory: ``config.json["kind"]``, else guessed from the files present.

    Returns ``None`` for a directory that is not a run.
    """
    run = Path(path)
    config_path = run / "config.json"
    if config_path.is_file():
        try:
            kind = json.loads(config_path.read_text()).get("kind")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            kind = None
        if kind in ("rates", "cl"):
            return kind
    if (run / "fits.csv").is_file() or (run / "summary.json").is_file():
        return "rates"
    if (run / "accuracy_matrix.csv").is_file() or (run / "metrics.json").is_file():
        return "cl"
    return None


def find_runs(root: str | os.PathLike[str]) -> list[FoundRun]:
    """All run directories at any depth below ``root`` (``root`` itself included), sorted.

    A directory that is a run is not searched further (checkpoints inside it are ignored).
    """
    root = Path(root)
    found: list[FoundRun] = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        kind = detect_kind(dirpath)
        if kind is not None:
            found.append(FoundRun(Path(dirpath), kind))
            dirnames[:] = []
    return sorted(found, key=lambda r: str(r.path))
