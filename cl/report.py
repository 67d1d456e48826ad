"""Plain-text summaries of a run (the CLI prints them; the library only formats)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def accuracy_table(acc: np.ndarray) -> str:
    """The accuracy matrix as an aligned text table (rows: after task t)."""
    T = acc.shape[1]
    header = "after task | " + " ".join(f"{'task ' + str(i):>8}" for i in range(T)) + " |  average"
    lines = [header, "-" * len(header)]
    for t, row in enumerate(acc):
        cells = " ".join(f"{'':>8}" if math.isnan(v) else f"{v:8.2f}" for v in row)
        lines.append(f"{t:>10} | {cells} | {np.nanmean(row):8.2f}")
    return "\n".join(lines)


def summary(metrics: dict[str, Any], acc: np.ndarray) -> str:
    """Accuracy matrix plus the headline metrics of a finished run."""
    head = (
        f"method {metrics['method']} | dataset {metrics['dataset']} | backbone "
        f"{metrics['backbone']} ({metrics.get('backbone_weights_sha256', '?')[:12]}) | "
        f"seed {metrics['seed']}"
    )
    rows = [
        ("FA  final average accuracy", metrics["FA"]),
        ("CA  cumulative average accuracy", metrics["CA"]),
        ("FM  average forgetting", metrics["FM"]),
        ("FA  before head alignment", metrics.get("FA_before_alignment")),
        ("TII task-identity accuracy", metrics.get("TII_accuracy")),
        ("TIL task-incremental (--task_inc)", metrics.get("TIL_accuracy")),
        ("TIL with the true task's prompt", metrics.get("TIL_oracle_prompt_accuracy")),
    ]
    # a metric that does not apply (null in metrics.json) is shown as such, not as a number
    body = "\n".join(f"  {name:<34}" + ("     n/a" if value is None or not math.isfinite(value)
                                         else f"{value:8.2f} %")
                     for name, value in rows
                     if value is not None or name.startswith(("TII", "TIL")))
    return f"{head}\n\n{accuracy_table(acc)}\n\n{body}"
