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
import os
import re
import sys
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from cl.backbones.loading import (
    BACKBONES,
    WEIGHTS_ENV,
    BackboneWeightsError,
    ensure_weights,
    pretrained_backbones,
)
from cl.backbones.timm_names import is_timm_name
from cl.config import (
    ATTENTION_IMPLS,
    PROTOCOLS,
    CLConfig,
    default_backbone,
    describe_presets,
    resolve_layers,
)
from cl.config_files import ConfigFileError, format_resolved, read_config_file
from cl.data.registry import DatasetError, available_datasets, builtin_datasets
from cl.errors import ConfigError
from cl.methods import available_methods
from cl.models.gating import ACTIVATIONS
from cl.numerics import NonFiniteLossError
from cl.report import summary
from cl.run.engine import RunDirError, resolve_device, run_experiment
from cl.run.files import WriteFailedError
from cl.run.loggers import CSVLogger, TaskSummary, TensorBoardLogger, WandbLogger
from cl.run.precision import PRECISIONS, CompileError
from norga.cli import (
    PARALLEL_PER_CORE,
    OneLineParser,
    add_verbosity_flags,
    ascii_int,
    configure_logging,
    max_parallel,
    output_dir_problem,
    progress_enabled,
    usable_cores,
)
from norga.digest import config_digest
from norga.signals import run_main

# config field -> the flag that sets it (ConfigError.field -> the flag its message names)
FLAG_OF = {
    "epochs": "--epochs", "tii_epochs": "--tii-epochs", "batch_size": "--batch-size",
    "num_workers": "--num-workers",
    "gate_act": "--gate-act", "attention": "--attention", "device": "--device",
    "precision": "--precision", "compile": "--compile", "seed": "--seed",
    "stop_after_task": "--stop-after-task", "weights": "--weights", "data_root": "--data-root",
    "method_options.gate_act": "--gate-act", "method_options.attention": "--attention",
    "loggers": "--tensorboard/--wandb",
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


def _backbone_name(text: str) -> str:
    """A backbone tag or a timm-style name (checked for existence; weights are found later)."""
    if text in BACKBONES or is_timm_name(text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a tag nor a timm model name; allowed: {', '.join(BACKBONES)}, a "
        "timm model name (timm:NAME or NAME, see timm.list_models()) or hf_hub:ORG/NAME")


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
    what.add_argument("--dataset", choices=available_datasets(),
                      help="benchmark; synthetic and digits work offline (required unless "
                      "--config names it)")
    what.add_argument("--method", choices=available_methods(),
                      help="registered methods: " + ", ".join(available_methods())
                      + " (norga: HiDe-Prompt with the non-linear residual gate; hide: "
                      "HiDe-Prompt, linear gate; the others are the baselines); default norga")
    what.add_argument("--backbone", type=_backbone_name, metavar="NAME",
                      help="a tag (" + ", ".join(BACKBONES) + "; *-random are randomly "
                      "initialised, for offline smoke tests, the others need a weights file, "
                      "see below), a timm model name (timm:NAME or NAME, e.g. "
                      "vit_base_patch16_224.augreg_in21k) or hf_hub:ORG/NAME; timm names take "
                      "their weights from the Hugging Face cache, --download or --weights; "
                      "default vit-tiny-random for synthetic/digits, sup21k otherwise")
    what.add_argument("--weights", metavar="PATH",
                      help="local pretrained weights file in the original format (.npz, "
                      ".safetensors, .pth); converted and loaded strictly")
    what.add_argument("--gate-act", choices=ACTIVATIONS,
                      help="NoRGa activation sigma (default: the dataset/backbone preset)")
    what.add_argument("--protocol", choices=PROTOCOLS,
                      help="default: the project's protocol; official: every listed deviation "
                      "from the official code switched back at once (docs/deviations.md; single "
                      "items with --set, which still wins)")
    what.add_argument("--seed", type=ascii_int, help="run seed: class order, init, "
                      "shuffling, Gaussian replay (default 42)")
    budget = p.add_argument_group("training budget")
    budget.add_argument("--epochs", type=ascii_int, metavar="N",
                        help="epochs of the prompt / main training stage only (default: "
                        "preset); the TII stage of hide/norga keeps its preset, see --tii-epochs")
    budget.add_argument("--tii-epochs", type=ascii_int, metavar="N",
                        help="epochs of the TII (task-identity) stage of hide/norga only "
                        "(default: preset, 20 on the paper benchmarks)")
    budget.add_argument("--quick", action="store_true",
                        help="tiny budget for a smoke test (minutes on a CPU)")
    budget.add_argument("--batch-size", type=ascii_int, metavar="N", help="default: preset (128)")
    budget.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set lr=0.01, or an option of "
                        "the method as --set method.NAME=VALUE (also NAME=VALUE or "
                        "method_options.NAME=VALUE), e.g. --set method.tap_epochs=10 (names: "
                        "--print-config); repeatable")
    files = p.add_argument_group("config files")
    files.add_argument("--config", metavar="FILE",
                       help="read the configuration from FILE (.yaml, .yml or .json; a run's "
                       "config.json reproduces that run); flags given as well win")
    files.add_argument("--print-config", action="store_true",
                       help="print the resolved configuration as YAML, each value with where "
                       "it comes from (default, preset, recipe, protocol, quick, file, flag), "
                       "and exit without running")
    files.add_argument("--dry-run", action="store_true",
                       help="check the configuration and the run's resources (device, --out, "
                       "threads), print the configuration and what would run, and exit; "
                       "nothing is written")
    where = p.add_argument_group("where and how")
    where.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    where.add_argument("--threads", type=ascii_int, metavar="N",
                       help="CPU threads for torch (default: 1 for vit-tiny-random, which is "
                       "faster on small tensors, else torch's default)")
    where.add_argument("--data-root", metavar="DIR", help="where real datasets live")
    where.add_argument("--download", action="store_true",
                       help="download a missing dataset and missing backbone weights")
    where.add_argument("--num-workers", type=ascii_int, metavar="N",
                       help="data-loader workers (default 0)")
    where.add_argument("--out", metavar="DIR", type=_nonempty,
                       help="run directory (default runs/<dataset>-<method>-<backbone>-<digest>-"
                       "s<seed>, -official appended under --protocol official; <digest>: 8 hex "
                       "digits of every config field but the seed and the runtime ones, so "
                       "different configurations never share a folder)")
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
    where.add_argument("--stop-after-task", type=ascii_int, metavar="T",
                       help="checkpoint after task T and stop (resume by re-running)")
    logs = p.add_argument_group("logging")
    logs.add_argument("--tensorboard", action="store_true",
                      help="also write TensorBoard scalars to <run>/tensorboard (needs the "
                      "tensorboard package); epochs.csv and tasks.csv are always written")
    logs.add_argument("--wandb", metavar="PROJECT",
                      help="also log to Weights & Biases project PROJECT (needs wandb)")
    add_verbosity_flags(logs)
    return p


def overrides_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The config values the flags give (only the flags given)."""
    overrides: dict = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"argument --set: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in OWN_FLAG:
            parser.error(f"argument --set: {key!r} has its own flag; use {OWN_FLAG[key]} "
                         "instead of --set")
        if key in overrides:
            parser.error(f"argument --set: {key} is given twice ({overrides[key]!r} and "
                         f"{value!r}); give it once")
        odd = next((ch for ch in value if ch.isdigit() and not ch.isascii()), None)
        if odd is not None:  # Python's int() and float() would read fullwidth digits
            parser.error(f"argument --set: {key}={value!r} has the non-ASCII digit {odd!r}; "
                         "numbers are written with the ASCII digits 0-9")
        overrides[key] = value
    direct = {
        "weights": args.weights, "gate_act": args.gate_act, "batch_size": args.batch_size,
        "data_root": args.data_root, "attention": args.attention,
        "precision": args.precision, "compile": args.compile, "protocol": args.protocol,
        "seed": args.seed, "device": args.device, "num_workers": args.num_workers,
    }
    overrides.update({k: v for k, v in direct.items() if v is not None})
    if args.download:
        overrides["download"] = True
    if args.quick:
        overrides["quick"] = True
    # --epochs is the prompt stage only: the official scripts set the TII run's epochs apart
    # (20 in every one, e.g. MoE_PromptCL scripts/cifar100_Sup21k_NoRGa.sh l.14 vs 50 at l.23)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.tii_epochs is not None:
        overrides["tii_epochs"] = args.tii_epochs
    return overrides


def _config_error(exc: ConfigError, file_keys: frozenset[str] = frozenset(),
                  config: str | None = None, given: Iterable[str] = ()) -> str:
    """``argument FLAG: reason``: the flag that sets ``exc.field`` (``--set FIELD`` for a field
    without a flag of its own, ``--config FILE`` for a value only the config file gives, named
    as ``file_keys``). An option of the method is named as ``--set`` was given it (``given``:
    the keys of the flags; ``NAME``, ``method.NAME`` or ``method_options.NAME``), else as
    ``--set method.NAME``. A key of ``dataset_options`` (or one option given in a whole
    ``method_options`` object) is set with ``--set dataset_options=JSON``: the flag names the
    field and the text keeps the key (``argument --set dataset_options: dataset_options.x:
    ...``)."""
    head, _, name = exc.field.partition(".")
    if exc.field in file_keys:
        return f"argument --config {config}: {exc}"
    if exc.field in FLAG_OF:
        return f"argument {FLAG_OF[exc.field]}: {exc.reason}"
    if head == "method_options" and name:
        spelled = [k for k in (name, f"method.{name}", exc.field) if k in given]
        if spelled or "method_options" not in given:
            return f"argument --set {(spelled or [f'method.{name}'])[0]}: {exc.reason}"
    flag = FLAG_OF.get(exc.top_field, f"--set {exc.top_field}")
    text = exc.reason if exc.field == exc.top_field else str(exc)
    return f"argument {flag}: {text}"


def check_resources(args: argparse.Namespace, cfg, parser: argparse.ArgumentParser) -> None:
    """The flags checked before any work: threads, workers, device, data root, --out."""
    cap = f"allowed: 1 to {max_parallel()} ({PARALLEL_PER_CORE} x the {usable_cores()} cores)"
    if args.threads is not None and not 1 <= args.threads <= max_parallel():
        parser.error(f"argument --threads: {args.threads} is out of range; {cap}")
    if cfg.num_workers > max_parallel():
        parser.error(f"argument --num-workers: {cfg.num_workers} is out of range; "
                     f"allowed: 0 to {max_parallel()} ({PARALLEL_PER_CORE} x the "
                     f"{usable_cores()} cores)")
    if args.stop_after_task is not None and args.stop_after_task < 0:
        parser.error(f"argument --stop-after-task: must be >= 0, got {args.stop_after_task}")
    try:
        resolve_device(cfg.device)
    except ConfigError as exc:
        parser.error(f"argument --device: {exc.reason}")
    if cfg.dataset in OFFLINE_DATASETS and cfg.data_root is not None:
        parser.error(f"argument --data-root: not used by --dataset {cfg.dataset} (generated or "
                     f"bundled, nothing is read from {cfg.data_root!r}); drop the flag")
    if args.out is not None:
        problem = output_dir_problem(Path(args.out))
        if problem:
            parser.error(f"argument --out: {problem}")


def _named(layer: dict) -> frozenset[str]:
    """The fields a layer sets, as errors name them: the key, and for a method option also
    ``method_options.NAME`` (however it was spelled); ``dataset_options.KEY`` for its keys."""
    names: set[str] = set()
    for key, value in layer.items():
        head, dot, name = key.partition(".")
        names.add(key)
        if key in ("method_options", "dataset_options") and isinstance(value, dict):
            names |= {f"{key}.{n}" for n in value} | {key}
        elif dot and head in ("method", "method_options"):
            names.add(f"method_options.{name}")
        elif not dot:
            names.add(f"method_options.{key}")
    return frozenset(names)


def configure(args: argparse.Namespace,
              parser: argparse.ArgumentParser) -> tuple[CLConfig, str, dict]:
    """The run's configuration from ``--config FILE`` and the flags (flags win), its
    ``--print-config`` text and the values the flags gave; every error is one ``parser.error``
    line (exit 2)."""
    file_values: dict = {}
    if args.config is not None:
        try:
            file_values = read_config_file(args.config)
        except ConfigFileError as exc:
            parser.error(f"argument --config: {exc}")
    chosen: dict[str, str] = {}
    sources: dict[str, str] = {}
    allowed = {"dataset": available_datasets(), "method": available_methods(),
               "backbone": list(BACKBONES)}
    for key in ("dataset", "method", "backbone"):
        if getattr(args, key) is not None:
            chosen[key], sources[key] = getattr(args, key), "flag"
        elif key in file_values:
            value = file_values[key]
            if value not in allowed[key]:
                parser.error(f"argument --config {args.config}: {key} {value!r} is not "
                             f"available; allowed: {', '.join(allowed[key])}")
            chosen[key], sources[key] = value, "file"
    if "dataset" not in chosen:
        parser.error("the following arguments are required: --dataset (or a --config FILE "
                     "that names the dataset)")
    chosen.setdefault("method", CLConfig.method)
    chosen.setdefault("backbone", default_backbone(chosen["dataset"]))
    file_layer = {k: v for k, v in file_values.items() if k not in chosen}
    flags = overrides_from_args(args, parser)
    try:
        resolved = resolve_layers(chosen["dataset"], chosen["method"], chosen["backbone"],
                                  explicit=[("file", file_layer), ("flag", flags)])
    except ConfigError as exc:
        parser.error(_config_error(exc, _named(file_layer) - _named(flags), args.config,
                                   flags))
    return resolved.config, format_resolved(resolved, sources), flags


def default_run_dir(config: dict) -> str:
    """``runs/<dataset>-<method>-<backbone>-<digest>-s<seed>[-official]``: the digest
    (:func:`norga.digest.config_digest`) keeps every configuration in its own folder, so seeds
    of one configuration sit side by side and a changed flag never resumes another run."""
    backbone = re.sub(r"[^A-Za-z0-9._-]+", "_", str(config["backbone"]))  # hf_hub:org/name
    official = "-official" if config.get("protocol") == "official" else ""
    return (f"runs/{config['dataset']}-{config['method']}-{backbone}-"
            f"{config_digest(config)}-s{config['seed']}{official}")


def run_loggers(args: argparse.Namespace, cfg) -> list:
    """CSV files always, a one-line summary per task on stderr unless ``--quiet``, TensorBoard
    and W&B on request (a missing package is a :class:`ConfigError` naming it)."""
    loggers: list = [CSVLogger()]
    if not args.quiet:
        loggers.append(TaskSummary(sys.stderr))
    if args.tensorboard:
        loggers.append(TensorBoardLogger())
    if args.wandb:
        loggers.append(WandbLogger(args.wandb, cfg.to_dict()))
    return loggers


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    """Run ``norga-cl`` with the arguments ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status (2: bad arguments or missing data/weights, 1: a failed run);
    argument errors exit with status 2 (``SystemExit``) after one line on stderr.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    configure_logging(args, "cl")
    cfg, text, flags = configure(args, parser)
    if args.print_config:
        print(text, end="")
        return 0
    check_resources(args, cfg, parser)
    out = Path(args.out or default_run_dir(cfg.to_dict()))
    if args.dry_run:
        print(text, end="")
        print(f"# dry run: the configuration is valid; it would run in {out} (nothing written)")
        return 0
    import torch
    from tqdm import tqdm

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif cfg.backbone == "vit-tiny-random":
        torch.set_num_threads(1)
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: only rank 0 talks and writes
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        args.no_progress = True
    random_init = cfg.backbone in BACKBONES and BACKBONES[cfg.backbone].pretrained is False
    where_weights = (f"from ${WEIGHTS_ENV} or the download cache" if cfg.backbone in BACKBONES
                     else "from the Hugging Face cache")
    if random_init or not args.quiet:  # -q: only the random-init warning of the header
        print(f"backbone: {cfg.backbone}"
              + ("  [RANDOM INIT - no pretrained weights; numbers are a smoke test, not paper "
                 "numbers]" if random_init else f"  weights {cfg.weights or where_weights}"))
    if not args.quiet:
        print(f"data: {cfg.dataset}" + (
            "  [generated offline]" if cfg.dataset == "synthetic" else
            "  [scikit-learn bundled digits]" if cfg.dataset == "digits" else
            f"  from {cfg.data_root}" if cfg.data_root else
            "  [registered builder]" if cfg.dataset not in builtin_datasets() else ""))
        act = getattr(cfg.method_options, "gate_act", None)  # only NoRGa's gate has one
        gate = f" (gate act {act})" if act is not None else ""
        print(f"method: {cfg.method}{gate}, seed {cfg.seed}, out {out}")

    bars = progress_enabled(args)  # only on a terminal: no carriage returns in log files

    def progress(iterable, desc):
        return tqdm(iterable, desc=desc, leave=False, disable=not bars, file=sys.stderr)

    try:
        loggers = run_loggers(args, cfg)
        if cfg.download:  # opt-in: fetch missing weights into the weights folder first
            ensure_weights(cfg.backbone, cfg.weights)
        result = run_experiment(cfg, out, overwrite=args.overwrite,
                                stop_after_task=args.stop_after_task, progress=progress,
                                loggers=loggers)
    except ConfigError as exc:  # found before anything was written
        parser.error(_config_error(exc, given=flags))
    except (DatasetError, BackboneWeightsError, RunDirError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a benchmark loader that is not installed yet
        print(f"{prog}: error: dataset {cfg.dataset!r} is not available: {exc}", file=sys.stderr)
        return 2
    except CompileError as exc:  # --compile could not compile the model on this machine
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except NonFiniteLossError as exc:  # deterministic: the same command diverges again
        print(f"{prog}: error: {exc}; the run is deterministic, so re-running the same command "
              "diverges the same way: change the configuration (e.g. a lower --set lr) and use "
              "another --out", file=sys.stderr)
        return 1
    except WriteFailedError as exc:  # a failed run, not a usage error
        print(f"{prog}: error: {exc}; once the cause is fixed (space, permissions), re-run the "
              "same command to resume", file=sys.stderr)
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
