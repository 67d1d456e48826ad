"""``norga-rates`` (also ``python experiments/rates.py``): convergence rates of prefix-MoE least
squares, linear vs NoRGa gating.

Fits the prompt atoms by least squares over a grid of sample sizes and replicates, measures the
Voronoi loss to the truth, and fits its rate. Writes a run directory (fits.csv, timing.csv,
summary.json, mechanism.json, config.json with provenance, summary.txt, convergence figures) and
prints the summary.

Examples
--------
    norga-rates --gate norga                                 # = python experiments/rates.py
    python experiments/rates.py --gate norga                 # quick: E1 + E4, ~1 min
    python experiments/rates.py --gate both --preset paper   # E1-E4, publication sweep
    python experiments/rates.py --setting over-tanh --n-min 1000 --replicates 20
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from functools import partial
from pathlib import Path

from moe_theory.gates import ACTIVATIONS, GateKind
from moe_theory.io import dumps_json, read_config, run_provenance, write_run
from moe_theory.model import EXPERTS
from moe_theory.near.cli import (
    add_near_arguments,
    near_config_from_args,
    run_near_cli,
    sweep_kwargs,
)
from moe_theory.near.output import record_files
from moe_theory.rates.sweep import (
    BACKENDS,
    PRESETS,
    RateConfig,
    SchedulerUnreachableError,
    n_grid,
    run_rates,
)
from moe_theory.settings import FIT_SETTINGS, SETTINGS
from moe_theory.varpro import SOLVERS
from norga.cli import (
    PARALLEL_PER_CORE,
    OneLineParser,
    add_verbosity_flags,
    configure_logging,
    gib,
    max_parallel,
    nonempty_path,
    output_dir_problem,
    total_memory,
    usable_cores,
)
from norga.runlock import RunLockedError, run_lock
from norga.signals import run_main

# Memory model of a sweep (measured: one task at n = 1e6 with 40 replicates peaks at 1.51 GiB,
# about 40 bytes per sample and replicate; docs/performance.md), with a margin.
BYTES_PER_SAMPLE = 64
BYTES_PER_WORKER = 300 * 2**20
BYTES_PER_FIT_RECORD = 2048
SCHEDULER_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9a-fA-F:]+\]|[\w.-]+)"
                               r":(\d{1,5})/?$")

# Default smallest n of the slope fits (the linear curve is pre-asymptotic below 1e3,
# docs/theory-background.md#reference-numbers).
DEFAULT_FIT_N_MIN = 1000


# the name in messages when called by import (the scripts and the installed command pass theirs)
PROG = "rates.py"


def positive_int(text: str) -> int:
    """An integer >= 1, also written like ``1e5`` (but not ``1.5`` or ``1e400``)."""
    try:
        if "e" in text.lower():
            number = float(text)
            if not number.is_integer():  # also nan / inf
                raise ValueError
            value = int(number)
        else:
            value = int(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"expected a positive integer (like 1000 or 1e5), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it has a meaningful one (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser(prog: str = PROG) -> OneLineParser:
    """The parser of ``norga-rates`` (messages name ``prog``)."""
    p = OneLineParser(
        prog=prog,
        description="Simulate prefix-MoE regression, fit it by least squares and measure how the "
        "Voronoi loss to the truth shrinks with n, for linear (prefix tuning) and NoRGa gating. "
        "Starts are near the truth (oracle): the sweep measures the statistical rate, not "
        "optimisation.",
        epilog="Presets: quick = E1 exact + E4 mechanism, n = 7 values in 1e2..1e5, 12 replicates, "
        "1 restart (about 11 s on 2 cores); paper = E1 + E4 with 20 values of n, 40 "
        "replicates, 3 restarts (about 25 s); full = E1-E4 at the paper size (about 11 min on 2 "
        "cores with the default solver, 12 with --solver lm; --backend dask spreads it "
        "over a cluster). Explicit flags override the "
        "preset. Settings: exact (E1, L'=L=1, affine), over (E2, L'=2, affine, |theta|<=5), "
        "over-tanh (E3, L'=2, tanh experts, |theta|<=5), mechanism (E4: PDE residual, Fisher "
        "conditioning, flat manifold; no fitting), near (E5: two true prompts at separation t; "
        "Fisher exponents of every gate/split/expert/cluster size, fits at fixed t and on "
        "shrinking schedules; noise sd 0.001, cap 2000. Its presets: quick = 7 n in 1e2..1e4, "
        "R = 8 (66 s of CPU, measured on a clean run on the shared 2-core development "
        "machine); paper = 9 n in 1e2..1e5, R = 16 (7 CPU-minutes with the former two "
        "schedules; more with the default four, not re-measured); full = 13 n in 1e2..1e6, "
        "R = 16 up to n = 1e5 and R = 8 above (--replicates sets the first, at most 8 the second), "
        "schedules on n <= 1e5 (7.6 CPU-minutes with the default solver, 27 with --solver "
        "lm; resumable with --cache-dir; --preset paper --n-max 1000000 --num-n 13 gives "
        "R = 16 and schedules up to 1e6, projected 70 CPU-minutes)).",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--gate",
        choices=("linear", "norga", "both"),
        default="norga",
        help="gate to study; with 'norga' the linear gate is fitted alongside as the "
        "baseline (see --no-baseline)",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="with --gate norga, do not fit the linear baseline",
    )
    p.add_argument("--activation", choices=ACTIVATIONS, default="tanh", help="sigma of NoRGa")
    p.add_argument(
        "--expert",
        choices=EXPERTS,
        default=None,
        help="prompt expert type for exact/over (default: each setting's own: affine for "
        "exact/over, tanh for over-tanh)",
    )
    p.add_argument(
        "--setting",
        choices=SETTINGS,
        nargs="+",
        default=None,
        help="experiments to run (default: from the preset)",
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="quick",
        help="sweep size; the flags below override it",
    )
    p.add_argument(
        "--n-min",
        type=positive_int,
        default=None,
        help="smallest n of the grid (default: from the preset)",
    )
    p.add_argument(
        "--n-max",
        type=positive_int,
        default=None,
        help="largest n of the grid (default: from the preset)",
    )
    p.add_argument(
        "--num-n",
        type=positive_int,
        default=None,
        help="number of log-spaced n (default: from the preset)",
    )
    p.add_argument(
        "--replicates",
        type=positive_int,
        default=None,
        help="replicates per n (default: from the preset)",
    )
    p.add_argument(
        "--restarts",
        type=positive_int,
        default=None,
        help="restarts per fit (default: from the preset)",
    )
    p.add_argument(
        "--fit-n-min",
        type=positive_int,
        default=None,
        help="smallest n entering the slope fits (pre-asymptotic points excluded); must not "
        "exceed the largest n (default: 1000, or every n when the grid stays below 1000)",
    )
    p.add_argument(
        "--max-iter", type=positive_int, default=None,
        help="cap on Jacobian evaluations per fit (default 400; 2000 for near)",
    )
    p.add_argument(
        "--solver", choices=SOLVERS, default="auto",
        help="fitter: lm (Levenberg-Marquardt on every parameter), varpro (variable projection: "
        "affine experts solved exactly, LM on the gates) or auto (varpro for two or more "
        "affine atoms, refitted by lm where it does not converge, lower RSS kept; lm for one "
        "atom and for tanh experts)",
    )
    p.add_argument(
        "--global-starts", type=nonnegative_int, default=0,
        help="global mode: this many starts spread over the gate-parameter box per fit "
        "instead of near-truth starts, lowest RSS kept (default 0: near-truth starts)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=1, help="the one seed of every draw")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=usable_cores(),
        help=f"parallel worker processes (at most {PARALLEL_PER_CORE} x the cores, "
        f"{max_parallel()} here)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="loky",
        help="where tasks run: local processes (loky) or a Dask cluster (pip install "
        "'norga[dask]'); results are bit-identical either way",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler, e.g. tcp://host:8786 (with --backend dask; "
        "default: a local cluster of --jobs workers)",
    )
    p.add_argument(
        "--out",
        type=nonempty_path,
        default=None,
        help="run directory (default: results/rates/<preset>-<gate>-seed<seed>)",
    )
    p.add_argument(
        "--cache-dir",
        type=nonempty_path,
        default=Path(".cache/norga-rates"),
        help="cache of finished fits, one checksummed JSON file per block (re-runs compute "
        "only new points; a damaged entry is recomputed)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run directory that holds a different run",
    )
    p.add_argument("--no-figure", action="store_true", help="skip the convergence figures")
    add_near_arguments(p)
    add_verbosity_flags(p)
    return p


def config_from_args(args: argparse.Namespace, parser: OneLineParser) -> RateConfig:
    preset = PRESETS[args.preset]
    n_min = args.n_min if args.n_min is not None else preset["n_min"]
    n_max = args.n_max if args.n_max is not None else preset["n_max"]
    num_n = args.num_n or preset["num_n"]
    if n_min < 2:
        parser.error(f"argument --n-min: must be >= 2, got {n_min}")
    if n_min > n_max:
        parser.error(f"argument --n-min: {n_min} is above --n-max {n_max}; need n-min <= n-max")
    fitting = any(s in FIT_SETTINGS for s in (args.setting or preset["settings"]))
    if fitting and n_min == n_max:
        parser.error(f"argument --n-max: equals --n-min ({n_min}); the rate fit needs at least "
                     "2 distinct n, so n-min < n-max")
    if num_n > n_max - n_min + 1:
        parser.error(f"argument --num-n: {num_n} distinct sample sizes do not fit in "
                     f"[{n_min}, {n_max}]; allowed: 1 to {n_max - n_min + 1}")
    if args.no_baseline and args.gate != "norga":
        parser.error(f"argument --no-baseline: only used with --gate norga (the baseline is the "
                     f"linear gate fitted alongside NoRGa), not with --gate {args.gate}")
    if args.jobs > max_parallel():
        parser.error(f"argument --jobs: {args.jobs} is more than {PARALLEL_PER_CORE} x the "
                     f"{usable_cores()} cores; allowed: 1 to {max_parallel()}")
    replicates = args.replicates or preset["replicates"]
    _check_memory(parser, tuple(dict.fromkeys(args.setting or preset["settings"])),
                  ("norga", "linear"), n_max, num_n, replicates, args.jobs)
    n_values = n_grid(n_min, n_max, num_n)
    if len(n_values) < 3 and fitting:
        parser.error(f"argument --num-n: the rate fit needs at least 3 distinct n (two leave no "
                     f"degrees of freedom for its CI); --n-min {n_min}, --n-max {n_max}, "
                     f"--num-n {num_n} give {list(n_values)}")
    by_option: dict[str, tuple[GateKind, ...]] = {
        "linear": ("linear",),
        "both": ("norga", "linear"),
        "norga": ("norga",) if args.no_baseline else ("norga", "linear"),
    }
    gates = by_option[args.gate]
    settings = tuple(dict.fromkeys(args.setting or preset["settings"]))
    fit_n_min = args.fit_n_min
    if fit_n_min is None:
        fit_n_min = DEFAULT_FIT_N_MIN if max(n_values) >= DEFAULT_FIT_N_MIN else min(n_values)
    elif fit_n_min > max(n_values) and any(s != "mechanism" for s in settings):
        parser.error(
            f"argument --fit-n-min: {args.fit_n_min} is above every n of the grid (largest "
            f"{max(n_values)}); need --fit-n-min <= {max(n_values)}"
        )
    if args.expert == "affine" and "over-tanh" in settings:
        parser.error("argument --expert: 'affine' contradicts --setting over-tanh (tanh experts)")
    if args.solver == "varpro" and ("over-tanh" in settings or args.expert == "tanh"):
        parser.error("argument --solver: 'varpro' needs affine experts; the tanh experts of "
                     "over-tanh / --expert tanh need 'lm' or 'auto'")
    return RateConfig(
        settings=settings,
        gates=gates,
        activation=args.activation,
        expert=args.expert,
        n_values=n_values,
        replicates=replicates,
        restarts=args.restarts or preset["restarts"],
        seed=args.seed,
        fit_n_min=fit_n_min,
        max_iter=args.max_iter or 400,
        noise_sd=args.noise_sd or 0.1,
        preset=args.preset,
        solver=args.solver,
        global_starts=args.global_starts,
    )


def sweep_memory(settings: tuple[str, ...], gates: tuple[GateKind, ...], n_max: int, num_n: int,
                 replicates: int, jobs: int, block: int = RateConfig.block) -> int:
    """Estimated peak memory (bytes) of a sweep: the workers' largest tasks plus the records."""
    fits = sum(s in FIT_SETTINGS for s in settings) * len(gates) * num_n * replicates
    workers = min(jobs, max(1, -(-replicates // block))) if fits else 0
    per_worker = BYTES_PER_WORKER + BYTES_PER_SAMPLE * n_max * min(block, replicates)
    return workers * per_worker + fits * BYTES_PER_FIT_RECORD + 24 * num_n


def _check_memory(parser: OneLineParser, settings, gates, n_max: int, num_n: int,
                  replicates: int, jobs: int) -> None:
    need, have = sweep_memory(settings, gates, n_max, num_n, replicates, jobs), total_memory()
    if have is not None and need > have:
        parser.error(f"arguments --n-max/--num-n/--replicates/--jobs: this sweep would need "
                     f"about {gib(need)} of memory (n up to {n_max}, {num_n} values of n, "
                     f"{replicates} replicates, {jobs} jobs); this machine has {gib(have)}")


def check_out_dir(out: Path, config: RateConfig, overwrite: bool, parser: OneLineParser) -> None:
    """Refuse an unusable --out, or one holding a different run (unless --overwrite)."""
    problem = output_dir_problem(out)
    if problem:
        parser.error(f"argument --out: {problem}")
    if (out / "config.json").exists() and not overwrite:
        try:
            old = read_config(out)
        except (OSError, ValueError):
            parser.error(
                f"argument --out: {out} holds an unreadable config.json; choose another "
                "--out or pass --overwrite"
            )
        if old != json.loads(dumps_json(config.to_dict())):
            parser.error(
                f"argument --out: {out} holds a different run; choose another --out or "
                "pass --overwrite"
            )


def check_backend(args: argparse.Namespace, parser: OneLineParser) -> None:
    if args.scheduler is not None and args.backend != "dask":
        parser.error("argument --scheduler: only used with --backend dask")
    if args.scheduler is not None:
        match = SCHEDULER_ADDRESS.match(args.scheduler)
        if not match or not 1 <= int(match.group(1)) <= 65535:
            parser.error(f"argument --scheduler: {args.scheduler!r} is not a scheduler address; "
                         "expected tcp://HOST:PORT with a port in 1..65535")
    if args.backend == "dask":
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            parser.error("argument --backend: 'dask' needs the optional extra: "
                         "pip install 'norga[dask]'")


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    """Run ``norga-rates`` with the arguments ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status; bad input exits with status 2 (``SystemExit``) after one line on
    stderr.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(args, "moe_theory")
    config = config_from_args(args, parser)
    check_backend(args, parser)
    out = args.out if args.out is not None else (
        Path("results/rates") / f"{args.preset}-{args.gate}-seed{args.seed}")
    check_out_dir(out, config, args.overwrite, parser)
    near_config = near_config_from_args(args, parser, out) if "near" in config.settings else None
    if not args.no_cache:
        problem = output_dir_problem(args.cache_dir)
        if problem:
            parser.error(f"argument --cache-dir: {problem} (or pass --no-cache)")

    start = time.perf_counter()
    try:
        with run_lock(out):
            # re-checked under the lock: another run may have finished into --out meanwhile
            check_out_dir(out, config, args.overwrite, parser)
            provenance = run_provenance(
                [sys.argv[0], *argv] if argv is not None else sys.argv)
            # an E5-only run writes only E5 files (no config.json of an E1-E4 sweep never run)
            rates_part = bool(config.fit_settings) or "mechanism" in config.settings
            result = run_rates(config, **sweep_kwargs(args, "fits")) if rates_part else None
            written = []
            if result is not None:
                try:
                    written = write_run(result, out, provenance)
                except OSError as err:  # disk full / permissions: the old files are in place
                    sys.stderr.write(f"{prog}: error: {err.strerror or err} (the fits are "
                                     "cached; re-running after freeing space only writes the "
                                     "files)\n")
                    return 1
                if not args.no_figure and result.records:
                    from figures.convergence import convergence_figures_for_run
                    from figures.runs import RunFormatError, read_rates_run

                    try:
                        figures = convergence_figures_for_run(read_rates_run(out), out)
                    except (OSError, RunFormatError) as err:  # the result files are written
                        sys.stderr.write(f"{prog}: error: could not draw the figures: "
                                         f"{getattr(err, 'strerror', None) or err}; the result "
                                         f"files in {out} are complete (norga-figures {out} "
                                         "draws the figures later)\n")
                        return 1
                    record_files(out, figures)
                    written += figures
            near_text = None
            if near_config is not None:
                near_files, near_text = run_near_cli(near_config, args, out, provenance)
                written += near_files
    except RunLockedError as err:
        parser.error(f"argument --out: {err}")
    except SchedulerUnreachableError as err:  # nothing was computed
        parser.error(f"argument --scheduler: {err}")
    elapsed = time.perf_counter() - start
    if result is not None:
        print(result.summary())
    if near_text:
        print(("\n" if result is not None else "") + near_text)
    print(
        f"\nwall time {elapsed:.1f} s with {args.jobs} job(s); wrote {len(written)} files to {out}:"
    )
    for path in written:
        print(f"  {path}")
    return 0


def run(prog: str = "norga-rates") -> int:
    """Entry point of the installed ``norga-rates`` (and of ``experiments/rates.py``): ``main``
    on ``sys.argv`` with clean Ctrl-C / SIGTERM handling."""
    return run_main(partial(main, prog=prog), prog)


if __name__ == "__main__":
    sys.exit(run(PROG))
