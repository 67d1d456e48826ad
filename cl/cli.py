"""Train and evaluate HiDe-Prompt / NoRGa class-incremental learning on one benchmark.

Examples (the installed command norga-cl is the same as python experiments/cl.py)
--------
  python experiments/cl.py --dataset synthetic --quick            # ~1 min on a laptop CPU
  python experiments/cl.py --dataset digits --method hide
  python experiments/cl.py --dataset cifar100 --backbone sup21k --weights ViT-B_16.npz \\
      --data-root data --download --device cuda

Re-running the same command resumes after the last finished task; a finished run is not
touched unless --overwrite is given. Exit code 2 means bad arguments or missing data/weights
(nothing is written then).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial
from pathlib import Path

from cl.backbones.loading import (
    BACKBONES,
    WEIGHTS_ENV,
    BackboneWeightsError,
    ensure_weights,
    pretrained_backbones,
)
from cl.config import (
    ATTENTION_IMPLS,
    PROTOCOLS,
    default_backbone,
    describe_presets,
    method_uses,
    resolve_config,
)
from cl.data.registry import DatasetError, available_datasets
from cl.errors import ConfigError
from cl.methods import available_methods
from cl.models.gating import ACTIVATIONS
from cl.numerics import NonFiniteLossError
from cl.report import summary
from cl.run.engine import RunDirError, resolve_device, run_experiment
from cl.run.files import WriteFailedError
from cl.run.precision import PRECISIONS, CompileError
from norga.cli import (
    PARALLEL_PER_CORE,
    OneLineParser,
    max_parallel,
    output_dir_problem,
    usable_cores,
)
from norga.signals import run_main

# config field -> the flag that sets it (ConfigError.field -> the flag its message names)
FLAG_OF = {
    "epochs": "--epochs", "batch_size": "--batch-size", "num_workers": "--num-workers",
    "gate_act": "--gate-act", "attention": "--attention", "device": "--device",
    "precision": "--precision", "compile": "--compile", "seed": "--seed",
    "stop_after_task": "--stop-after-task", "weights": "--weights", "data_root": "--data-root",
}
# config fields with a flag of their own: --set refuses them (two ways to say one thing)
OWN_FLAG = {
    "dataset": "--dataset", "method": "--method", "backbone": "--backbone",
    "weights": "--weights", "seed": "--seed", "gate_act": "--gate-act", "quick": "--quick",
    "batch_size": "--batch-size", "device": "--device", "data_root": "--data-root",
    "download": "--download", "num_workers": "--num-workers", "attention": "--attention",
    "precision": "--precision", "compile": "--compile",
}
OFFLINE_DATASETS = ("synthetic", "digits")
# the name in messages when called by import (the scripts and the installed command pass theirs)
PROG = "cl.py"


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not a folder; give a folder name")
    return text


def backbone_listing() -> str:
    """Pretrained tags, their paper names and where the weights come from (for --help)."""
    lines = [f"pretrained backbones (--weights PATH, a file of that name in ${WEIGHTS_ENV} "
             "(default ~/.cache/norga/weights), or --download):"]
    for tag in pretrained_backbones():
        spec = BACKBONES[tag]
        lines.append(f"  {tag:<13} {spec.paper_name:<9} {spec.filename}  <- {spec.url}")
        if spec.note:
            lines.append(f"  {'':<20}({spec.note})")
    return "\n".join(lines)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The parser of ``norga-cl`` (messages name ``prog``)."""
    p = OneLineParser(
        prog=prog,
        hint="",
        description=__doc__.split("\n\n")[0],
        # the preset table is generated from the preset dicts (method modules included)
        epilog="\n\n".join(__doc__.split("\n\n")[1:]) + "\n" + backbone_listing() + "\n\n"
        + describe_presets(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to run")
    what.add_argument("--dataset", required=True, choices=available_datasets(),
                      help="benchmark; synthetic and digits work offline")
    what.add_argument("--method", default="norga", choices=available_methods(),
                      help="registered methods: " + ", ".join(available_methods())
                      + " (norga: HiDe-Prompt with the non-linear residual gate; hide: "
                      "HiDe-Prompt, linear gate; the others are the baselines); default norga")
    what.add_argument("--backbone", choices=list(BACKBONES),
                      help="ViT weights tag; *-random are randomly initialised (offline smoke "
                      "tests), the others need a weights file (see below); default "
                      "vit-tiny-random for synthetic/digits, sup21k otherwise")
    what.add_argument("--weights", metavar="PATH",
                      help="local pretrained weights file in the original format (.npz, "
                      ".safetensors, .pth); converted and loaded strictly")
    what.add_argument("--gate-act", choices=ACTIVATIONS,
                      help="NoRGa activation sigma (default: the dataset/backbone preset)")
    what.add_argument("--protocol", choices=PROTOCOLS,
                      help="default: the project's protocol; official: every listed deviation "
                      "from the official code switched back at once (docs/deviations.md; single "
                      "items with --set, which still wins)")
    what.add_argument("--seed", type=int, default=42, help="run seed: class order, init, "
                      "shuffling, Gaussian replay (default 42)")
    budget = p.add_argument_group("training budget")
    budget.add_argument("--epochs", type=int, metavar="N",
                        help="epochs of prompt training and of TII training (default: preset)")
    budget.add_argument("--quick", action="store_true",
                        help="tiny budget for a smoke test (minutes on a CPU)")
    budget.add_argument("--batch-size", type=int, metavar="N", help="default: preset (128)")
    budget.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set tap_epochs=10 "
                        "(see config.json of a run for the names); repeatable")
    where = p.add_argument_group("where and how")
    where.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    where.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for torch (default: 1 for vit-tiny-random, which is "
                       "faster on small tensors, else torch's default)")
    where.add_argument("--data-root", metavar="DIR", help="where real datasets live")
    where.add_argument("--download", action="store_true",
                       help="download a missing dataset and missing backbone weights")
    where.add_argument("--num-workers", type=int, default=0, metavar="N",
                       help="data-loader workers (default 0)")
    where.add_argument("--out", metavar="DIR", type=_nonempty,
                       help="run directory (default runs/<dataset>-<method>-<backbone>-s<seed>, "
                       "with -official appended under --protocol official)")
    where.add_argument("--overwrite", action="store_true", help="replace an existing run")
    where.add_argument("--attention", choices=ATTENTION_IMPLS,
                       help="prefix-attention implementation (default fused)")
    where.add_argument("--precision", choices=PRECISIONS,
                       help="fp32 (default): exact, for reproduction; bf16: autocast of the ViT "
                       "forward passes on the GPU (heads, losses and class statistics stay "
                       "float32/float64; allowed on a CPU but slow there)")
    where.add_argument("--compile", action="store_true", default=None,
                       help="torch.compile the models' ViT forward passes (first step compiles; "
                       "a failure stops with a one-line error naming this flag)")
    where.add_argument("--stop-after-task", type=int, metavar="T",
                       help="checkpoint after task T and stop (resume by re-running)")
    where.add_argument("--no-progress", action="store_true", help="hide progress bars")
    where.add_argument("-v", "--verbose", action="store_true", help="log more")
    return p


def overrides_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    overrides: dict = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"argument --set: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in OWN_FLAG:
            parser.error(f"argument --set: {key!r} has its own flag; use {OWN_FLAG[key]} "
                         "instead of --set")
        overrides[key] = value
    direct = {
        "weights": args.weights, "gate_act": args.gate_act, "batch_size": args.batch_size,
        "data_root": args.data_root, "attention": args.attention,
        "precision": args.precision, "compile": args.compile, "protocol": args.protocol,
    }
    overrides.update({k: v for k, v in direct.items() if v is not None})
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
        if method_uses(args.method, "tii_epochs"):  # no TII model: nothing else to set
            overrides["tii_epochs"] = args.epochs
    overrides.update(seed=args.seed, device=args.device, num_workers=args.num_workers,
                     download=args.download)
    return overrides


def _config_error(exc: ConfigError) -> str:
    """``argument FLAG: reason``: the flag that sets ``exc.field`` (``--set FIELD`` for a field
    without a flag of its own). A key of ``method_options`` / ``dataset_options`` is set with
    ``--set method_options=JSON`` (or ``.KEY=``): the flag names the field and the text keeps
    the key (``argument --set method_options: method_options.schedule: ...``)."""
    flag = FLAG_OF.get(exc.top_field, f"--set {exc.top_field}")
    text = exc.reason if exc.field == exc.top_field else str(exc)
    return f"argument {flag}: {text}"


def check_resources(args: argparse.Namespace, cfg, parser: argparse.ArgumentParser) -> None:
    """The flags checked before any work: threads, workers, device, data root, --out."""
    cap = f"allowed: 1 to {max_parallel()} ({PARALLEL_PER_CORE} x the {usable_cores()} cores)"
    if args.threads is not None and not 1 <= args.threads <= max_parallel():
        parser.error(f"argument --threads: {args.threads} is out of range; {cap}")
    if args.num_workers > max_parallel():
        parser.error(f"argument --num-workers: {args.num_workers} is out of range; "
                     f"allowed: 0 to {max_parallel()} ({PARALLEL_PER_CORE} x the "
                     f"{usable_cores()} cores)")
    if args.stop_after_task is not None and args.stop_after_task < 0:
        parser.error(f"argument --stop-after-task: must be >= 0, got {args.stop_after_task}")
    try:
        resolve_device(args.device)
    except ConfigError as exc:
        parser.error(f"argument --device: {exc.reason}")
    if cfg.dataset in OFFLINE_DATASETS and args.data_root is not None:
        parser.error(f"argument --data-root: not used by --dataset {cfg.dataset} (generated or "
                     f"bundled, nothing is read from {args.data_root!r}); drop the flag")
    if args.out is not None:
        problem = output_dir_problem(Path(args.out))
        if problem:
            parser.error(f"argument --out: {problem}")


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    """Run ``norga-cl`` with the arguments ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status (2: bad arguments or missing data/weights, 1: a failed run);
    argument errors exit with status 2 (``SystemExit``) after one line on stderr.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        backbone = args.backbone or default_backbone(args.dataset)
        cfg = resolve_config(args.dataset, args.method, backbone, quick=args.quick,
                             overrides=overrides_from_args(args, parser))
    except ConfigError as exc:
        parser.error(_config_error(exc))
    import torch
    from tqdm import tqdm

    check_resources(args, cfg, parser)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif cfg.backbone == "vit-tiny-random":
        torch.set_num_threads(1)
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: only rank 0 talks and writes
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        args.no_progress = True
    official = "-official" if cfg.protocol == "official" else ""
    out = Path(args.out or f"runs/{cfg.dataset}-{cfg.method}-{cfg.backbone}-s{cfg.seed}{official}")
    print(f"backbone: {cfg.backbone}"
          + ("  [RANDOM INIT - no pretrained weights; numbers are a smoke test, not paper numbers]"
             if BACKBONES[cfg.backbone].pretrained is False
             else f"  weights {cfg.weights or f'from ${WEIGHTS_ENV} or the download cache'}"))
    print(f"data: {cfg.dataset}" + ("  [generated offline]" if cfg.dataset == "synthetic" else
                                    "  [scikit-learn bundled digits]" if cfg.dataset == "digits"
                                    else f"  from {cfg.data_root}"))
    gate = f" (gate act {cfg.gate_act})" if cfg.method == "norga" else ""  # only NoRGa has one
    print(f"method: {cfg.method}{gate}, seed {cfg.seed}, out {out}")

    def progress(iterable, desc):
        return tqdm(iterable, desc=desc, leave=False, disable=args.no_progress, file=sys.stderr)

    try:
        if cfg.download:  # opt-in: fetch missing weights into the weights folder first
            ensure_weights(cfg.backbone, cfg.weights)
        result = run_experiment(cfg, out, overwrite=args.overwrite,
                                stop_after_task=args.stop_after_task, progress=progress)
    except ConfigError as exc:  # found before anything was written
        parser.error(_config_error(exc))
    except (DatasetError, BackboneWeightsError, RunDirError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a benchmark loader that is not installed yet
        print(f"{prog}: error: dataset {cfg.dataset!r} is not available: {exc}", file=sys.stderr)
        return 2
    except CompileError as exc:  # --compile could not compile the model on this machine
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except (NonFiniteLossError, WriteFailedError) as exc:  # a failed run, not a usage error
        print(f"{prog}: error: {exc}; re-run the same command to resume", file=sys.stderr)
        return 1
    if result.already_finished:
        print(f"{out} already holds this finished run (pass --overwrite to re-run); saved results:")
    elif result.resumed_after_task is not None:
        print(f"resumed after task {result.resumed_after_task}")
    if not result.finished:
        print(f"stopped after task {result.accuracy.shape[0] - 1}; re-run the same command "
              "to continue")
        return 0
    print()
    print(summary(result.metrics, result.accuracy))
    print(f"\nrun directory: {out}")
    return 0


def run(prog: str = "norga-cl") -> int:
    """Entry point of the installed ``norga-cl`` (and of ``experiments/cl.py``): ``main`` on
    ``sys.argv`` with clean Ctrl-C / SIGTERM handling."""
    return run_main(partial(main, prog=prog), prog)


if __name__ == "__main__":
    sys.exit(run(PROG))
