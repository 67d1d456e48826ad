"""Regenerate every figure and table from saved results.

Usage (the installed command norga-figures is the same as python experiments/figures.py)::

    python experiments/figures.py RESULTS_DIR [--out DIR] [--readme-images DIR]
    python experiments/figures.py --write-example DIR      # synthetic runs, for trying it out
    python experiments/figures.py compare RUN_DIR... [--out DIR]   # FA/CA/FM per configuration

Walks RESULTS_DIR for rates and CL run directories (any depth), writes PDF + PNG figures and
Markdown + LaTeX tables to --out (default RESULTS_DIR/figures), prints one line per file
written and one line per thing skipped. Exit code 2 on bad command-line input.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from norga.cli import (
    OneLineParser,
    add_verbosity_flags,
    configure_logging,
    nonempty_path,
    output_dir_problem,
)
from norga.signals import run_main

# the name in messages when called by import (the scripts and the installed command pass theirs)
PROG = "figures.py"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of ``norga-figures`` (messages name ``prog``)."""
    p = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", type=nonempty_path, metavar="RESULTS_DIR",
                   help="results root (run dirs at any depth)")
    p.add_argument("--out", type=nonempty_path, default=None,
                   help="output folder (default: RESULTS_DIR/figures)")
    p.add_argument("--readme-images", type=nonempty_path, default=None, metavar="DIR",
                   help="also write one small PNG of each figure kind to DIR (e.g. docs/img)")
    p.add_argument("--write-example", type=nonempty_path, default=None, metavar="DIR",
                   help="write a synthetic example results tree to DIR and exit")
    add_verbosity_flags(p)
    return p


def build_compare_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of ``norga-figures compare``."""
    p = OneLineParser(prog=f"{prog} compare",
                      description="One table of FA/CA/FM (mean +/- sd over seeds, n seeds) per "
                      "configuration, the config fields that differ as columns and the "
                      "published number beside ours; printed as Markdown and written as "
                      "compare.csv and compare.md. Runs of different configurations are never "
                      "averaged.")
    p.add_argument("runs", nargs="+", type=nonempty_path, metavar="RUN_DIR",
                   help="CL run directories or folders holding them (any depth)")
    p.add_argument("--out", type=nonempty_path, default=Path("comparison"),
                   help="folder for compare.csv and compare.md (default ./comparison)")
    add_verbosity_flags(p)
    return p


def compare_main(argv: list[str], prog: str = PROG) -> int:
    """``norga-figures compare RUN_DIR... [--out DIR]``."""
    parser = build_compare_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(args, "figures")
    for path in args.runs:
        if not path.exists():
            parser.exit(2, f"{parser.prog}: error: RUN_DIR {path} does not exist\n")
    problem = output_dir_problem(args.out)
    if problem:
        parser.exit(2, f"{parser.prog}: error: --out {problem}\n")
    from figures.compare import compare_runs, to_csv, to_markdown_table
    from figures.runs import RunFormatError, find_runs, read_cl_run
    from norga.io import atomic_write_text

    runs, notes = [], []
    for root in args.runs:
        for found in find_runs(root):
            if found.kind != "cl":
                continue
            try:
                runs.append(read_cl_run(found.path))
            except RunFormatError as err:
                notes.append(f"skip cl run: {err}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not runs:
        parser.exit(2, f"{parser.prog}: error: no readable CL run under "
                    f"{', '.join(map(str, args.runs))}\n")
    rows, columns = compare_runs(runs)
    markdown = to_markdown_table(rows, columns)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(args.out / "compare.csv", to_csv(rows, columns)),
               atomic_write_text(args.out / "compare.md", markdown + "\n")]
    if not args.quiet:
        print(markdown)
        print(f"{len(runs)} runs, {len(rows)} configurations; written: "
              f"{', '.join(map(str, written))}")
    return 0


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    """Run ``norga-figures`` with the arguments ``argv`` (default ``sys.argv[1:]``).

    ``norga-figures compare ...`` runs :func:`compare_main`. Returns the exit status; bad input
    exits with status 2 (``SystemExit``) after one line on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:], prog)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(args, "figures")
    if args.write_example is not None:
        problem = output_dir_problem(args.write_example)
        if problem:
            parser.error(f"--write-example {problem}")
        from figures.examples import write_example_results

        root = write_example_results(args.write_example)
        print(f"wrote synthetic example results to {root}")
        return 0
    if args.results is None:
        parser.error("RESULTS_DIR is required (or use --write-example DIR)")
    if not args.results.is_dir():
        parser.error(f"RESULTS_DIR {args.results} is not a directory")
    out = args.out if args.out is not None else args.results / "figures"
    for flag, folder in (("--out", out), ("--readme-images", args.readme_images)):
        if folder is None:
            continue
        problem = output_dir_problem(folder)
        if problem:
            parser.error(f"{flag} {problem}")
        resolved, results = folder.resolve(), args.results.resolve()
        if resolved == results or resolved in results.parents:
            parser.error(f"{flag} {folder} contains RESULTS_DIR {args.results}, whose "
                         "runs would then be skipped as output; use a folder inside it or "
                         "elsewhere (default: RESULTS_DIR/figures)")
    # Imported after the argument checks so that bad input fails fast (matplotlib is slow).
    from figures.report import render_results, write_readme_images

    report = render_results(args.results, out)
    if args.readme_images is not None:
        extra = write_readme_images(args.results, args.readme_images)
        report.written += extra.written
    for note in report.notes:
        print(f"note: {note}")
    print(f"{len(report.written)} files written:")
    for path in report.written:
        print(f"  {path}")
    return 0


def run(prog: str = "norga-figures") -> int:
    """Entry point of the installed ``norga-figures`` (and of ``experiments/figures.py``):
    ``main`` on ``sys.argv`` with clean Ctrl-C / SIGTERM handling."""
    return run_main(partial(main, prog=prog), prog)


if __name__ == "__main__":
    sys.exit(run(PROG))
