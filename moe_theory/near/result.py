"""The outcome of an E5 run, :class:`NearResult`: its fits, timing and mechanism table, with
the analysis and report computed from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from moe_theory.gates import GateKind
from moe_theory.near.analysis import analyse_near, group_rows
from moe_theory.near.config import NearConfig
from moe_theory.near.report import near_summary


@dataclass
class NearResult:
    """Fits, timing and the mechanism table of an E5 run, with the analysis of near.json."""

    config: NearConfig
    records: list[dict[str, object]]
    mechanism: dict[str, object]
    timing: list[dict[str, object]] = field(default_factory=list)
    _cache: dict[str, object] = field(default_factory=dict, repr=False)

    def rows(self, kind: str, value: float, gate: GateKind) -> list[dict[str, object]]:
        return group_rows(self.records, kind, value, gate)

    def analyse(self) -> dict[str, object]:
        if "analysis" not in self._cache:
            self._cache["analysis"] = analyse_near(self.config, self.records, self.mechanism)
        return self._cache["analysis"]  # type: ignore[return-value]

    def to_json(self) -> dict[str, object]:
        return {"kind": "near", "version": 1, "config": self.config.to_dict(),
                "mechanism": self.mechanism, **self.analyse()}

    def summary(self) -> str:
        return near_summary(self.config, self.mechanism, self.analyse(), self.records)
