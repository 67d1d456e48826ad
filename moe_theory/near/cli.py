"""Command-line glue of ``norga-rates --setting near`` (E5): flags, config, run.

Kept apart from :mod:`moe_theory.cli` so that the E1-E4 code path stays as it is: that module
adds these flags, builds a :class:`~moe_theory.near.config.NearConfig` when ``near`` is among
the settings, and calls :func:`run_near_cli` after its own work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_theory.gates import GateKind
from moe_theory.near.config import NEAR_PRESETS, NearConfig
from moe_theory.near.mechanism import SPLITS
from moe_theory.near.output import check_near_out, record_files, write_near
from moe_theory.near.sweep import run_near
from moe_theory.rates.sweep import n_grid

NEAR_NOISE_SD = 0.001


def _positive_float(text: str) -> float:
    try:
        if not text.isascii():  # float() would read fullwidth digits
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


#: The noise sd ``--noise-sd`` accepts. Responses are O(1): below the lower end the fits are
#: exact to rounding (zero losses, no rate to measure); above the upper end the noise swamps the
#: signal by orders of magnitude (fits diverge, and squares of the noise overflow near 1e154).
NOISE_SD_RANGE = (1e-8, 100.0)


def _noise_sd(text: str) -> float:
    value = _positive_float(text)
    lo, hi = NOISE_SD_RANGE
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; allowed: {lo:g} to {hi:g}")
    return value


def add_near_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of E5 (and ``--noise-sd``, shared with E1-E3)."""
    p.add_argument(
        "--noise-sd", type=_noise_sd, default=None,
        help=f"noise sd of the data (default 0.1 for E1-E3, {NEAR_NOISE_SD} for near: at 0.1 "
        "the parametric regime of linear gating at t = 0.4 lies beyond n = 1e9)",
    )
    p.add_argument(
        "--near-t", type=_positive_float, nargs="+", default=None, metavar="T",
        help="near: separations of the fixed-t truths, in (0, 1] (default 0.8 0.4 0.2)",
    )
    p.add_argument(
        "--near-gamma", type=_positive_float, nargs="+", default=None, metavar="GAMMA",
        help="near: schedules t_n = 0.8 (n/1000)^-gamma, gamma in (0, 1) (default 0.05 0.1 0.2 "
        "0.25; a schedule tests the first-order expansion only if gamma p_1 <= 0.8)",
    )
    p.add_argument(
        "--near-split", choices=SPLITS, default="both",
        help="near: which expert coordinates the two true atoms split (by +/- 0.5)",
    )


def near_config_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser, out: Path
) -> NearConfig:
    """The E5 configuration of a command line; bad values exit 2 with one line."""
    preset = NEAR_PRESETS[args.preset]
    n_min = args.n_min or preset["n_min"]
    n_max = args.n_max or preset["n_max"]
    by_option: dict[str, tuple[GateKind, ...]] = {
        "linear": ("linear",), "both": ("norga", "linear"),
        "norga": ("norga",) if args.no_baseline else ("norga", "linear")}
    gates = by_option[args.gate]
    values: dict[str, object] = {}
    if args.near_t is not None:
        values["t_values"] = tuple(dict.fromkeys(args.near_t))
    if args.near_gamma is not None:
        values["gammas"] = tuple(dict.fromkeys(args.near_gamma))
    replicates = args.replicates or preset["replicates"]
    if preset.get("reduced_above") is not None:  # full: fewer replicates at the largest n
        values["reduced_above"] = preset["reduced_above"]
        values["reduced_replicates"] = min(replicates, preset["reduced_replicates"])
    if preset.get("schedule_n_max") is not None:
        values["schedule_n_max"] = preset["schedule_n_max"]
    try:
        config = NearConfig(
            gates=gates,
            activation=args.activation,
            expert=args.expert or "affine",
            split=args.near_split,
            n_values=n_grid(n_min, n_max, args.num_n or preset["num_n"]),
            replicates=replicates,
            restarts=args.restarts or preset["restarts"],
            seed=args.seed,
            max_iter=args.max_iter or NearConfig.max_iter,
            noise_sd=args.noise_sd or NEAR_NOISE_SD,
            preset=args.preset,
            solver=args.solver,
            global_starts=args.global_starts,
            **values,  # type: ignore[arg-type]
        )
    except ValueError as err:
        flag = ("--near-t" if "t values" in str(err) else "--near-gamma" if "gamma" in str(err)
                else "--n-min/--n-max")
        parser.error(f"argument {flag}: {err}")
    if not args.overwrite:
        problem = check_near_out(out, config)
        if problem:
            parser.error(f"argument --out: {problem}; choose another --out or pass --overwrite")
    return config


def sweep_kwargs(args: argparse.Namespace, desc: str) -> dict:
    """The execution options that ``run_rates`` and ``run_near`` both take from the CLI flags
    (jobs, cache, backend, scheduler) and a progress bar over blocks labelled ``desc`` (only on
    a terminal and without ``--no-progress``, :func:`norga.cli.progress_enabled`)."""
    from tqdm import tqdm

    from norga.cli import progress_enabled

    def bar(it, total):
        return tqdm(it, total=total, desc=desc, unit="block")

    return {
        "jobs": args.jobs,
        "cache_dir": None if args.no_cache else args.cache_dir,
        "progress": bar if progress_enabled(args) else None,
        "backend": args.backend,
        "scheduler": args.scheduler,
    }


def run_near_cli(config: NearConfig, args: argparse.Namespace, out: Path,
                 provenance: dict[str, object] | None = None) -> tuple[list[Path], str]:
    """Run E5, write its files and figure (each in ``SHA256SUMS``); returns the files written
    and the report. ``provenance`` goes into ``near_provenance.json``."""
    result = run_near(config, **sweep_kwargs(args, "near fits"))
    written = write_near(result, out, provenance)
    if not args.no_figure:
        from figures.convergence_near import near_figure_for_run

        figures = near_figure_for_run(out)
        record_files(out, figures)
        written += figures
    return written, result.summary()
