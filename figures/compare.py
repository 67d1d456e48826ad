"""One comparison table of CL runs: FA / CA / FM per configuration, next to the papers' numbers.

Runs are grouped exactly as the figures and paper tables group them
(:func:`figures.grouping.group_by_variant`): seeds of one configuration are averaged, runs of
different configurations never are. Each row is one configuration: its setting, method, the
configuration digest (of ``config.json``: the one in the default run directory name; runs
with different backbone weights files are told apart by a column), the number of seeds, the
mean and sample standard deviation of each metric, the published number where
``figures/data/published.json`` has one for the setting, and one column per config field that
differs between configurations of one method in one setting (fields that differ only between
methods are their presets and are left out).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from figures.aggregate import MeanStd, mean_std
from figures.grouping import group_by_setting, group_by_variant, method_of, run_config
from figures.names import backbone_label, dataset_label
from figures.runs import CLRun
from figures.tables import load_published, published_value, to_markdown
from norga.digest import config_digest, differing_fields, flatten

METRICS = ("FA", "CA", "FM")
#: The published table searched first for each setting (the activation ablation is only a
#: fallback of NoRGa rows, see :func:`figures.tables.published_value`).
_ABLATION = "norga_activation_ablation"


@dataclass
class ComparisonRow:
    """One configuration: its runs, its aggregates and the published numbers."""

    dataset: str
    backbone: str
    method: str
    variant: str
    digest: str
    runs: list[CLRun]
    stats: dict[str, MeanStd]
    paper: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    paper_table: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int | None]:
        """Seeds of the runs, in order."""
        return sorted((r.seed for r in self.runs), key=lambda s: (s is None, s or 0))


def _paper(published: Mapping[str, Any], run: CLRun,
           method: str) -> tuple[dict[str, tuple[float, float | None]], str]:
    """The first published table (file order) with a number for this setting."""
    tables = [t for t in published.get("tables", {}) if t != _ABLATION] + [_ABLATION]
    for table in tables:
        found = {}
        for metric in METRICS:
            value = published_value(published, table, run.dataset, run.backbone, method, metric,
                                    run.gate_act if method == "norga" else None)
            if value is not None:
                found[metric] = value
        if found:
            return found, table
    return {}, ""


def compare_runs(runs: Sequence[CLRun],
                 published: Mapping[str, Any] | None = None) -> tuple[list[ComparisonRow],
                                                                       list[str]]:
    """The rows of the comparison (settings sorted, methods in paper order) and the differing
    config fields shown as columns."""
    published = published if published is not None else load_published()
    rows: list[ComparisonRow] = []
    for (dataset, backbone), sruns in group_by_setting(runs).items():
        for variant, vruns in group_by_variant(sruns).items():
            method = method_of(variant)
            paper, table = _paper(published, vruns[0], method)
            stats = {m: mean_std(float(r.metrics[m]) for r in vruns
                                 if isinstance(r.metrics.get(m), (int, float)))
                     for m in METRICS}
            # the digest in the default run directory name (cl.cli.default_run_dir)
            rows.append(ComparisonRow(dataset, backbone, method, variant,
                                      config_digest(vruns[0].config),
                                      list(vruns), stats, paper, table,
                                      flatten(run_config(vruns[0]))))
    buckets: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        buckets.setdefault((row.dataset, row.backbone, row.method), []).append(row.config)
    columns: list[str] = []
    for configs in buckets.values():
        if len(configs) > 1:
            columns += [f for f in differing_fields(configs) if f not in columns]
    columns = [c for c in columns if c not in ("dataset", "backbone", "method")]
    return rows, columns


def _num(x: float | None, digits: int = 2) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


CSV_HEAD = ["dataset", "backbone", "method", "config", "n_seeds", "seeds"]


def to_csv(rows: Sequence[ComparisonRow], columns: Sequence[str]) -> str:
    """Machine-readable table: one line per configuration, full precision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head = [*CSV_HEAD, *columns]
    for m in METRICS:
        head += [f"{m}_mean", f"{m}_sd", f"{m}_paper", f"{m}_paper_sd"]
    writer.writerow([*head, "paper_table"])
    for row in rows:
        line = [row.dataset, row.backbone, row.method, row.digest, len(row.runs),
                " ".join(str(s) for s in row.seeds), *(_cell(row.config.get(c)) for c in columns)]
        for m in METRICS:
            st = row.stats[m]
            pub = row.paper.get(m)
            line += [_num(st.mean, 4), _num(st.std, 4), _num(pub[0] if pub else None),
                     _num(pub[1] if pub else None)]
        writer.writerow([*line, row.paper_table])
    return buf.getvalue()


def _pm(stats: MeanStd) -> str:
    if stats.count == 0 or not math.isfinite(stats.mean):
        return "–"
    return f"{stats.mean:.2f}" + (f" ± {stats.std:.2f}" if stats.count > 1 else "")


def _paper_text(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "–"
    return f"{value[0]:.2f}" + (f" ± {value[1]:.2f}" if value[1] is not None else "")


def to_markdown_table(rows: Sequence[ComparisonRow], columns: Sequence[str]) -> str:
    """Readable table: mean ± sample std over seeds (no ± for one seed), paper number beside."""
    header = ["Dataset", "PTM", "Method", "Config", "Seeds", *columns]
    for m in METRICS:
        header += [m, f"{m} paper"]
    body = []
    for row in rows:
        line = [dataset_label(row.dataset), backbone_label(row.backbone), row.method, row.digest,
                str(len(row.runs)), *(_cell(row.config.get(c)) or "(unset)" for c in columns)]
        for m in METRICS:
            line += [_pm(row.stats[m]), _paper_text(row.paper.get(m))]
        body.append(line)
    return to_markdown(header, body, 5 + len(columns))
