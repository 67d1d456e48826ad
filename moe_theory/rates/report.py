"""Reporting of a rate sweep: ``summary.json`` content and the printed ``summary.txt``.

Both are built from the typed :class:`~moe_theory.rates.analysis.GroupAnalysis` records; the
JSON keeps the key order and numbers of ``summary.json`` version 2.
"""

from __future__ import annotations

from collections.abc import Iterable

from moe_theory.gates import Gate
from moe_theory.inference import AICC_DECISIVE
from moe_theory.rates.analysis import GroupAnalysis
from moe_theory.rates.config import FISHER_BAND, RateConfig

__all__ = ["summary_dict", "summary_text"]


def summary_dict(groups: Iterable[GroupAnalysis]) -> dict[str, object]:
    """The content of ``summary.json``: per setting and gate :meth:`GroupAnalysis.to_dict`."""
    settings: dict[str, dict[str, dict[str, object]]] = {}
    for entry in groups:
        settings.setdefault(entry.setting, {})[entry.gate] = entry.to_dict()
    return {
        "kind": "rates",
        "version": 2,
        "settings": settings,
        "init": "near-truth (oracle starts; measures the statistical rate, not optimisation)",
    }


def summary_text(
    config: RateConfig, groups: Iterable[GroupAnalysis], mechanism: dict[str, object] | None
) -> str:
    """Readable report: per setting the theorem, the slopes with CIs, the verdict; then E4."""
    starts = (f"{config.global_starts} global starts over the gate box per fit"
              if config.global_starts else "near-truth starts: this measures the statistical "
              "rate, not optimisation")
    lines = [
        f"Prefix-MoE convergence rates (least squares, {starts}).",
        f"seed={config.seed} replicates={config.replicates} "
        f"restarts={config.restarts} n={list(config.n_values)} solver={config.solver}",
    ]
    range_notes = []
    by_setting: dict[str, list[GroupAnalysis]] = {}
    for entry in groups:
        by_setting.setdefault(entry.setting, []).append(entry)
    for setting, entries in by_setting.items():
        lines += ["", f"== {setting}: {entries[0].theorem}"]
        for e in entries:
            label = Gate(e.gate, config.activation).label
            pad = f"  {'':14s}"
            ci, mci, lci = e.fit.conf_int(), e.median_fit.conf_int(), e.l2_fit.conf_int()
            lines.append(
                f"  {label:14s} L_1 slope {e.fit.slope:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] "
                f"(95% CI: {e.fit.method}, t({e.fit.df_resid:g})); median "
                f"{e.median_fit.slope:+.3f} [{mci[0]:+.3f}, {mci[1]:+.3f}] (bootstrap); "
                f"L2 slope {e.l2_fit.slope:+.3f} [{lci[0]:+.3f}, {lci[1]:+.3f}]"
            )
            mc = e.model_comparison
            if "aicc" in mc:
                aicc = " / ".join(
                    f"{k} {'n/a' if v is None else f'{v:.1f}'}"
                    for k, v in mc["aicc"].items()  # type: ignore[attr-defined]
                )
                q_ci = mc["q_ci"]
                lines.append(
                    f"{pad} rate model: {mc['classification']} ({mc['reason']}); "
                    f"AICc {aicc}; q={mc['q']:.3g} [{q_ci[0]:.3g}, {q_ci[1]:.3g}]"  # type: ignore[index]
                )
            if mc.get("range_note") and mc["range_note"] not in range_notes:
                range_notes.append(mc["range_note"])
            if e.fisher is not None:
                f = e.fisher
                lines.append(
                    f"{pad} Fisher check: C={f.C:.2f}; mean L_1({f.n}) = "
                    f"{f.measured_mean:.4f} vs C/sqrt(n) = {f.predicted:.4f}: ratio "
                    f"{f.ratio:.2f} [{f.ratio_ci[0]:.2f}, {f.ratio_ci[1]:.2f}]"
                )
                lines.append(
                    f"{pad} Fisher, pooled (second criterion, beside the Fisher check): mean "
                    f"over the n used of mean L_1 * sqrt(n) / C = {f.ratio_pooled:.2f}"
                )
            counts = dict(e.status_counts)
            lines.append(
                f"{pad} fits {e.n_fits}: converged {counts['converged']}, capped "
                f"{counts['capped']}, stalled {counts['stalled']}, at bound {e.n_at_bound}; "
                f"n used {list(e.n_used)}"
            )
            if setting != "exact":
                lines.append(f"{pad} {_parts_line(e)}")
            lines.append(f"{pad} verdict: {e.verdict}")
    notes = [
        f"Rate models: {note}; a rate label names one model only when its AICc is lower "
        f"than every other model's by >= {AICC_DECISIVE:g}, otherwise the models are called "
        "indistinguishable." for note in range_notes
    ]
    notes.append(
        "The log rate of linear gating is a worst-case (minimax) bound, not a prediction for "
        "a fixed truth; with affine experts an over-specified cell is not identifiable under "
        "either gate (docs/theory-background.md#identifiability), so E2 differences are heuristic. "
        "Fisher check (docs/theory-background.md#fisher-check): "
        "mean L_1 at the largest n over C/sqrt(n), with a 95% t CI over the replicates; "
        f"consistent when the CI overlaps [{FISHER_BAND[0]}, {FISHER_BAND[1]}]."
    )
    lines += ["", "Notes:"] + [f"- {note}" for note in notes]
    if mechanism:
        m = mechanism
        lines += [
            "",
            "== mechanism (E4)",
            "  PDE residual |d2F/dbeta1 db - dF/da|: "
            f"linear {m['pde_residual']['linear']:.2e}, "
            f"NoRGa {m['pde_residual']['norga']:.3g}",
        ]
        for f in m["fisher"]:
            lines.append(
                f"  Fisher {f['gate']:6s} {f['expert']:6s} lambda_min {f['lambda_min']:.3g} "
                f"cond {f['cond']:.3g} C {f['C']:.2f}"
            )
        for g, fm in m["flat_manifold"].items():
            lines.append(
                f"  flat manifold ({g}): max|g_G - g_G*| = {fm['max_abs_g_difference']:.1e} "
                f"with L_1 = {fm['voronoi_loss']:.3f}"
            )
    return "\n".join(lines)


def _parts_line(e: GroupAnalysis) -> str:
    """Median loss parts at the smallest and largest n (over-specified settings)."""
    first, last = e.per_n[0], e.per_n[-1]
    parts = ", ".join(
        f"{name} {getattr(first, key):.3g} -> {getattr(last, key):.3g}"
        for name, key in (("mass", "mass_median"), ("beta1", "beta1_median"), ("eta", "eta_median"))
    )
    return f"median L_1 parts from n={e.n_all[0]} to n={e.n_all[-1]}: {parts}"
