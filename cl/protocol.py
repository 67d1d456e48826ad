"""Every deliberate difference from the official code, with the setting that restores it.

:data:`DEVIATIONS` is the one list: the table of docs/deviations.md is
generated from it (:func:`deviation_table`, a test keeps the two equal), and ``--protocol
official`` (``--set protocol=official``) applies all of its settings at once
(:func:`official_layer`), after the presets and before ``--quick`` and explicit overrides, so a
single item can still be switched back with ``--set``.

Official sources: Minhchuyentoancbn/MoE_PromptCL @ e418337 (HiDe-Prompt, NoRGa, L2P, DualPrompt,
S-Prompt++ as run for the NoRGa tables), GT-RIPL/CODA-Prompt @ 6417d4f, Minhchuyentoancbn/SMoPE
@ 27b982c; for ``recipe=original-port``, JH-LEE-KR/l2p-pytorch @ f7bc994 and
JH-LEE-KR/dualprompt-pytorch @ 7eb457d (cl/methods/l2p.py, dualprompt.py); for
``recipe=hide-paper``, thu-ml/HiDe-Prompt @ 0ed4333 (cl/methods/hide.py, sprompt.py). Rows whose
project default already equals MoE_PromptCL (per-engine multi-centroid sampling) or that choose
between official recipes are listed too, so that every choice a published number depends on is
in one table; ``tests/test_cl_official_presets.py`` checks every row against the official values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KEYED = ("l2p", "dualprompt", "sprompt")
HIDE = ("hide", "norga")


@dataclass(frozen=True)
class Deviation:
    """One difference between the project's default and the official code.

    Attributes
    ----------
    what:
        Short name of the behaviour.
    methods:
        Methods it concerns.
    project, official:
        The project's default and the official code's behaviour.
    why:
        Why the default differs.
    moves:
        Which published numbers it can move.
    settings:
        Config overrides restoring the official behaviour, per method, keyed by ``"*"`` (every
        dataset) or a dataset name (added to ``"*"``). Empty: no switch (see ``flag_note``).
    flag_note:
        Shown instead of the settings when there is nothing to switch.
    """

    what: str
    methods: tuple[str, ...]
    project: str
    official: str
    why: str
    moves: str
    settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    flag_note: str = ""

    def layer(self, dataset: str, method: str) -> dict[str, Any]:
        """The overrides of this deviation for one run (empty if it does not apply)."""
        table = self.settings.get(method, {})
        return _merge(dict(table.get("*", {})), table.get(dataset, {}))

    def flag(self) -> str:
        """The ``--set`` text restoring the official behaviour (for the table of
        docs/deviations.md)."""
        if not self.settings:
            return self.flag_note
        where: dict[str, dict[str, list[str]]] = {}  # --set text -> scope -> methods
        for method, table in self.settings.items():
            for scope, layer in table.items():
                text = " ".join(_set_text(k, v) for k, v in layer.items())
                where.setdefault(text, {}).setdefault(scope, []).append(method)
        parts = []
        for text, scopes in where.items():
            if list(scopes) == ["*"] and len(scopes["*"]) == len(self.settings):
                parts.append(text)
                continue
            by_methods: dict[str, list[str]] = {}
            for scope, methods in scopes.items():
                by_methods.setdefault(", ".join(methods), []).append(
                    "every dataset" if scope == "*" else scope)
            detail = "; ".join(f"{m}: {', '.join(sc)}" for m, sc in by_methods.items())
            parts.append(f"{text} ({detail})")
        return "; ".join(parts + ([self.flag_note] if self.flag_note else []))


def _set_text(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"`--set {key}.{k}={_fmt(v)}`" for k, v in value.items())
    return f"`--set {key}={_fmt(value)}`"


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    for key, value in layer.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return base


def _each(methods: tuple[str, ...], table: dict[str, dict[str, Any]]) -> dict[str, dict]:
    return {m: table for m in methods}


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        what="prefix key/value pairing",
        methods=(*HIDE, "dualprompt", "sprompt"),
        project="each sample gets its own prompt's key and value prefixes",
        official="a reshape without transpose hands sample b the key/value prefixes of samples "
        "2b, 2b+1 (keys for the first half of the batch, values for the second)",
        why="a sample's prediction must not depend on the other images of its batch",
        moves="every HiDe/NoRGa/DualPrompt/S-Prompt number (NoRGa ImageNet-R 75.95 at test batch "
        "128, 61.85 at batch 1: MoE_PromptCL#1)",
        settings=_each((*HIDE, "dualprompt", "sprompt"), {"*": {"legacy_kv_reshape": True}}),
    ),
    Deviation(
        what="batch-majority prompt vote",
        methods=(*HIDE, *KEYED),
        project="each test image chooses its own prompt / task",
        official="one prompt per batch, the majority of the batch's choices (L2P everywhere, in "
        "training too; S-Prompt++ on CIFAR-100 and 5-Datasets; DualPrompt, HiDe, NoRGa on "
        "5-Datasets); test batches hold one task only, so this leaks the task",
        why="test-time task leakage (google-research/l2p#28)",
        moves="L2P everywhere; S-Prompt++ CIFAR-100; all 5-Datasets numbers",
        settings={
            "l2p": {"*": {"batchwise_prompt": True}},
            "sprompt": {"cifar100": {"batchwise_prompt": True},
                        "5datasets": {"batchwise_prompt": True}},
            **_each(("dualprompt", *HIDE), {"5datasets": {"batchwise_prompt": True}}),
        },
    ),
    Deviation(
        what="batch-vote tie order",
        methods=(*HIDE, *KEYED),
        project="a tie between prompts goes to the smaller prompt id",
        official="torch.unique counts padded to the pool size with the smallest id, then "
        "torch.topk (whose order among equal counts is not by id)",
        why="a documented, platform-independent rule",
        moves="only runs with the batch vote (above), when a batch ties",
        settings=_each((*HIDE, *KEYED), {"*": {"legacy_vote_ties": True}}),
    ),
    Deviation(
        what="key-matching scope",
        methods=("dualprompt", "sprompt"),
        project="at test time only the keys of tasks seen so far are matched",
        official="the whole key pool is matched, untrained keys of future tasks included",
        why="an untrained key carries no information; matching it only adds errors",
        moves="DualPrompt and S-Prompt++ accuracy after early tasks (CA, FM), little on FA",
        settings=_each(("dualprompt", "sprompt"),
                       {"*": {"method_options": {"match_all_keys": True}}}),
    ),
    Deviation(
        what="last partial training batch",
        methods=("coda-prompt", "smope"),
        project="kept (every training image is used in every epoch)",
        official="dropped (`drop_last=True` in the CODA/SMoPE trainers)",
        why="no image is silently skipped",
        moves="CODA-Prompt, SMoPE (a few images per epoch)",
        settings=_each(("coda-prompt", "smope"), {"*": {"legacy_drop_last": True}}),
    ),
    Deviation(
        what="5-Datasets transform leak",
        methods=(*HIDE, *KEYED),
        project="each dataset has its own transforms",
        official="the CIFAR transform (CIFAR-100 mean/std, colour jitter, RandomResizedCrop with "
        "the default scale) is kept for every dataset after CIFAR-10 in the shuffled order "
        "(FashionMNIST and SVHN at seed 42)",
        why="a bug: the transform variable is overwritten and never reset",
        moves="all 5-Datasets numbers",
        settings=_each((*HIDE, *KEYED),
                       {"5datasets": {"dataset_options": {"legacy_transform_leak": True}}}),
    ),
    Deviation(
        what="CODA-Prompt / SMoPE data transforms",
        methods=("coda-prompt", "smope"),
        project="the HiDe/NoRGa transforms (CIFAR: bicubic crop, colour jitter, CIFAR-100 "
        "mean/std; others: crop scale (0.05, 1)) for every method",
        official="their own get_transform: RandomResizedCrop with torchvision's defaults, flip, "
        "no normalisation; test Resize(256)+CenterCrop(224), CIFAR Resize(224) only",
        why="one input pipeline for every method of a table",
        moves="CODA-Prompt and SMoPE on CIFAR-100, ImageNet-R, CUB-200 (SMoPE's table)",
        settings=_each(("coda-prompt", "smope"),
                       {d: {"dataset_options": {"transforms": "coda"}}
                        for d in ("cifar100", "imagenet-r", "cub200")}),
    ),
    Deviation(
        what="CODA-Prompt / SMoPE backbone",
        methods=("coda-prompt", "smope"),
        project="the backbone of the table being reproduced (default sup21k, the NoRGa tables')",
        official="CODA-Prompt: timm 0.4.12 vit_base_patch16_224 (AugReg in21k -> in1k); SMoPE: "
        "sup1k (augreg2 in21k -> in1k) for CIFAR-100 and ImageNet-R, AugReg in21k for CUB",
        why="the backbone is a column of the tables, not part of the method",
        moves="CODA-Prompt's own numbers; SMoPE's table (Table 3)",
        flag_note="`--backbone sup21k-ft1k` (CODA-Prompt); `--backbone sup1k` / "
        "`--backbone sup21k-augreg` (SMoPE); not changed by `--protocol official`",
    ),
    Deviation(
        what="SMoPE frequent-expert flags",
        methods=("smope",),
        project="paper rule: F_j >= mean over all N_p experts, recomputed at every task",
        official="F_j >= mean over the experts used at least once; flags are never cleared",
        why="the paper's definition",
        moves="SMoPE (all tables)",
        settings={"smope": {"*": {"method_options": {"legacy_frequency_flags": True}}}},
    ),
    Deviation(
        what="SMoPE router-loss scale",
        methods=("smope",),
        project="scaled proxy q_bar . p^K / sqrt(D) (paper)",
        official="unscaled dot product",
        why="the paper's definition",
        moves="SMoPE (all tables)",
        settings={"smope": {"*": {"method_options": {"legacy_unscaled_router": True}}}},
    ),
    Deviation(
        what="SMoPE coswm schedule length",
        methods=("smope",),
        project="no freeze iterations; the cosine spans the true number of iterations",
        official="80 (CIFAR-100) / 40 (ImageNet-R) iterations at 1e-6 first; the cosine spans a "
        "nominal iter_step (40) x epochs, so its tail is never reached",
        why="the freeze and the nominal length are artefacts of the config files",
        moves="SMoPE CIFAR-100 and ImageNet-R",
        settings={"smope": {"cifar100": {"method_options": {"freeze_iters": 80, "iter_step": 40}},
                            "imagenet-r": {"method_options": {"freeze_iters": 40,
                                                              "iter_step": 40}}}},
    ),
    Deviation(
        what="SMoPE first scheduler steps",
        methods=("smope",),
        project="every iteration runs at its scheduled learning rate",
        official="the scheduler's constructor resets the learning rates, so the first training "
        "iteration runs at the base lr (before the freeze) and the first alignment step at "
        "ca_lr (10x the aligned cosine's start)",
        why="a side effect of the scheduler's constructor",
        moves="SMoPE (all tables)",
        settings={"smope": {"*": {"method_options": {"legacy_scheduler_quirks": True}}}},
    ),
    Deviation(
        what="SMoPE statistics transform",
        methods=("smope",),
        project="expert counts and Gaussian statistics on the training images with the test "
        "transform (in order)",
        official="on the training loader (train augmentation, shuffled, last partial batch "
        "dropped)",
        why="class statistics should describe the images the head is tested on",
        moves="SMoPE (all tables)",
        settings={"smope": {"*": {"method_options": {"legacy_stats_train_transform": True}}}},
    ),
    Deviation(
        what="L2P / DualPrompt recipe",
        methods=("l2p", "dualprompt"),
        project="the MoE_PromptCL configs and scripts (those behind the NoRGa/HiDe tables)",
        official="the original PyTorch ports (JH-LEE-KR/l2p-pytorch, dualprompt-pytorch): batch "
        "16 (L2P) / 24 (DualPrompt), 5 epochs (DualPrompt ImageNet-R 50), lr 0.03 (DualPrompt "
        "ImageNet-R 0.005), natural class order, L2P pool 10 (5-Datasets 20); DualPrompt "
        "CIFAR-100 E-prompt length 5 and batch vote; L2P's head reads the mean of the k*L "
        "prompt outputs ([CLS] excluded) and its prompts carry the [CLS] position embedding; "
        "its 5-Datasets config trains task t on prompts t*k .. (t+1)*k-1 only (prompt mask; "
        "the test matches the whole pool), each slice starting from the previous task's; one "
        "transform for every dataset (crop scale (0.05, 1), flip, no normalisation), CIFAR "
        "included (datasets.py l.37-38 and l.195-216 of both ports)",
        why="the tables the project reproduces were produced with the MoE_PromptCL configs",
        moves="comparisons with the original L2P/DualPrompt papers and with SMoPE's table",
        flag_note="`--set recipe=original-port` (L2P: cifar100, 5datasets, and synthetic/digits "
        "with the 5-Datasets prompts at their own budget; DualPrompt: cifar100, imagenet-r, the "
        "datasets the ports configure); L2P's single switches: `--set "
        "method_options.head_type=prompt`, `method_options.prompt_pos_embed=true`, "
        "`method_options.prompt_mask=true`, `method_options.shared_prompt_pool=true`; not part "
        "of `--protocol official`, whose reference is MoE_PromptCL; the ports' single transform "
        "alone: `--set dataset_options.transforms=port`; no switch: the CODA code's own L2P++ / "
        "DualPrompt re-implementations",
    ),
    Deviation(
        what="ImageNet-R train/test split",
        methods=(*HIDE, *KEYED, "coda-prompt", "smope"),
        project="fixed, stratified 80/20 split by file-name hash",
        official="HiDe/NoRGa: torch.randperm split of the first run, files moved on disk; "
        "CODA/SMoPE: their yaml file lists (a tree split by the HiDe/NoRGa code is used as "
        "it is)",
        why="a split that does not depend on the first run's seed and moves nothing",
        moves="every ImageNet-R number",
        settings=_each((*HIDE, *KEYED), {"imagenet-r": {"dataset_options": {"split": "hide"}}}),
        flag_note="CODA-Prompt / SMoPE: `--set dataset_options.split_dir=DIR`, DIR holding "
        "their imagenet-r_train.yaml and imagenet-r_test.yaml (CODA-Prompt's dataloaders/splits/;"
        " not shipped, so `--protocol official` cannot set it)",
    ),
    Deviation(
        what="multi-centroid statistics per engine",
        methods=HIDE,
        project="with `stats_method=multi-centroid` each method follows its own engine: HiDe "
        "draws the per-class budget n from every one of the 10 clusters, NoRGa n // 10 per "
        "cluster; k-means with one k-means++ run (scikit-learn n_init='auto')",
        official="MoE_PromptCL: the same (hide_tii_engine.py l.334/353-364 and "
        "hide_promtp_wtp_and_tap_engine.py l.457/476-487: n per cluster; norga_tii_engine.py "
        "l.342 and norga_prompt_engine.py l.634: n // n_centroids; KMeans(n_init='auto') at "
        "norga_tii_engine.py l.199, hide_tii_engine.py l.199); thu-ml/HiDe-Prompt: n per "
        "cluster, KMeans with scikit-learn 1.0.2's default 10 restarts (hide_tii_engine.py "
        "l.189, requirements.txt l.9)",
        why="not a deviation: listed so that the engine each method follows is visible (the "
        "default statistics are full covariances, as in every MoE_PromptCL script)",
        moves="HiDe-Prompt with multi-centroid statistics (HiDe-Prompt's own tables); NoRGa "
        "only when asked for multi-centroid statistics",
        flag_note="nothing to restore for MoE_PromptCL; thu-ml's restarts with `--set "
        "kmeans_n_init=10` (part of `--set recipe=hide-paper`)",
    ),
    Deviation(
        what="HiDe-Prompt / S-Prompt++ recipe",
        methods=("hide", "sprompt"),
        project="MoE_PromptCL's scripts and configs: batch 128 on one GPU (lr x 0.5), classes "
        "shuffled by the seed, full-covariance statistics; S-Prompt++ CIFAR-100 20 epochs "
        "(scripts/cifar100_Sup21k_sprompt.sh passes no --epochs; configs/cifar100_sprompt_5e.py "
        "l.6; the second script scripts/cifar100_sprompt.sh l.10 runs 40: `--epochs 40`)",
        official="thu-ml/HiDe-Prompt's own: HiDe-Prompt batch 24 x 8 GPUs (5-Datasets 32 x 4; "
        "training_scripts/train_cifar100_vit.sh l.6, l.11; train_5datsets_vit.sh l.6, l.11), so "
        "lr x 24/256 (about 5x lower), natural class order (configs/cifar100_hideprompt_5e.py "
        "l.74: --shuffle False), multi-centroid statistics with 10 centroids (l.151-152) and "
        "10 k-means restarts; S-Prompt++ configs "
        "(configs/*_sprompt_5e.py l.5-6, l.31-33): batch 24 (5-Datasets 16), 5 epochs "
        "(ImageNet-R 50), lr 0.03 (ImageNet-R 0.005), natural order; its README's CIFAR-100 "
        "command passes --epochs 40 (README.md l.103-115)",
        why="NoRGa's authors re-ran HiDe-Prompt and S-Prompt++ with the MoE_PromptCL scripts, "
        "the same setting as their NoRGa runs, so that HiDe vs NoRGa compares the gate alone",
        moves="default: the MoE_PromptCL re-runs (hyperparameter for hyperparameter NoRGa's "
        "setting); `recipe=hide-paper`: the HiDe-Prompt paper's own HiDe-Prompt and S-Prompt++ "
        "numbers, which the NoRGa tables quote as their HiDe-Prompt and S-Prompt rows (e.g. "
        "CIFAR-100 Sup-21K HiDe-Prompt FA 92.61)",
        flag_note="`--set recipe=hide-paper` (hide, sprompt: cifar100, imagenet-r, cub200, "
        "5datasets; one process sees a batch of 24, torchrun with 8 processes gives the scripts' "
        "global batch); not part of `--protocol official`, whose reference is MoE_PromptCL",
    ),
    Deviation(
        what="CODA-Prompt class order",
        methods=("coda-prompt",),
        project="classes shuffled by the seed, `random.seed(seed); random.shuffle` (MoE_PromptCL's "
        "`--shuffle`), seed 42 by default",
        official="natural order: the scripts run one repeat (experiments/cifar-100.sh l.13 "
        "REPEAT=1, imagenet-r.sh l.12), seed 0 (run.py l.126), and trainer.py l.59-67 shuffles "
        "only when seed > 0 (then by the same rule as ours)",
        why="one class order per seed for every method of a table",
        moves="CODA-Prompt's own numbers (its CIFAR-100 and ImageNet-R tables)",
        settings={"coda-prompt": {d: {"dataset_options": {"class_order": "standard"}}
                                  for d in ("cifar100", "imagenet-r", "cub200")}},
    ),
    Deviation(
        what="CODA-Prompt 5-Datasets pool size",
        methods=("coda-prompt",),
        project="10 components per task, 50 for 5-Datasets' 5 tasks",
        official="no 5-Datasets script; every script passes a pool of 100 "
        "(experiments/cifar-100.sh l.29, imagenet-r.sh l.28: `--prompt_param 100 8 0.0`), which "
        "the code splits evenly over the tasks (models/zoo.py l.44, l.99): 20 per task on 5 tasks",
        why="CODA-Prompt's 10 components per task, as on its 10-task benchmarks",
        moves="CODA-Prompt on 5-Datasets",
        settings={"coda-prompt": {"5datasets": {"method_options": {"pool_per_task": 20}}}},
    ),
    Deviation(
        what="before-alignment matrix, row 0",
        methods=HIDE,
        project="row 0 (task 0, when nothing is aligned) is row 0 of the final matrix",
        official="\"before CA\" is evaluated for tasks > 0 only; row 0 keeps the 0 of np.zeros "
        "(norga_prompt_engine.py l.211, l.391-398; hide_promtp_wtp_and_tap_engine.py l.204, "
        "l.331-338)",
        why="after task 0 the model before and after alignment is the same model",
        moves="CA and FM *before alignment* (metrics.json `*_before_alignment`; FA is unchanged; "
        "the published FA/CA/FM are after alignment)",
        settings=_each(HIDE, {"*": {"legacy_before_alignment_row0": True}}),
    ),
)


def official_layer(dataset: str, method: str) -> dict[str, Any]:
    """Overrides of ``--protocol official`` for one (dataset, method): every deviation of
    :data:`DEVIATIONS` that concerns them, switched to the official behaviour."""
    layer: dict[str, Any] = {}
    for deviation in DEVIATIONS:
        _merge(layer, deviation.layer(dataset, method))
    return layer


def deviation_table() -> str:
    """The table of docs/deviations.md (markdown), generated from :data:`DEVIATIONS`."""
    head = ("| method | behaviour | project default | official code | why | restore with "
            "(`--protocol official` sets all) | published numbers it can move |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for d in DEVIATIONS:
        methods = ", ".join(d.methods)
        lines.append(f"| {methods} | {d.what} | {d.project} | {d.official} | {d.why} | "
                     f"{d.flag()} | {d.moves} |")
    return "\n".join(lines)
