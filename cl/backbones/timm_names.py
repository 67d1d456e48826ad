"""Backbones named the way timm names them: a timm model name or a Hugging Face Hub id.

Besides the project's tags (:mod:`cl.backbones.tags`), ``--backbone`` accepts

``timm:<model>`` or a bare timm model name
    e.g. ``timm:vit_base_patch16_224.augreg_in21k`` or ``vit_small_patch16_224``: the
    architecture timm registers under that name, the weights of its pretrained tag (the Hugging
    Face repository timm names for it);
``hf_hub:<org>/<repo>``
    e.g. ``hf_hub:timm/vit_base_patch16_224.augreg_in21k``: timm's own prefix for a model whose
    architecture (``config.json``) and weights live in a Hugging Face repository.

Weights come from ``--weights PATH`` or from the Hugging Face cache (``$HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``); nothing is downloaded unless asked (``download=True``, the CLI's
``--download``), so a machine without internet and without a cached copy gets one clear
:class:`BackboneWeightsError` (exit 2). The file found is hashed (SHA-256, recorded in
``env.json`` and ``metrics.json`` like every backbone's) and then handed to timm's own
pretrained loader (``pretrained_cfg_overlay={"file": ...}``), which adapts it to the model
(position-embedding resampling for another image size, head removal for ``num_classes=0``) and
loads it strictly. The prompted models need a timm ``VisionTransformer``; another architecture
is refused with a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl.backbones.converters import HEAD_PREFIXES, BackboneWeightsError, _format_keys
from cl.backbones.tags import BACKBONES

TIMM_PREFIX = "timm:"
HF_PREFIX = "hf_hub:"
# timm reads weights in this order of preference from a Hugging Face repository
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class TimmName:
    """A parsed timm-style backbone name."""

    name: str  # as given (goes into config.json and the run directory name)
    model: str  # what timm.create_model takes
    repo: str | None  # the Hugging Face repository of the weights (None: timm names none)
    from_hub: bool  # hf_hub:: the architecture (config.json) comes from the repository too


def is_timm_name(name: str) -> bool:
    """Whether ``name`` is a ``timm:``/``hf_hub:`` name or a model name timm knows (not a tag)."""
    if name in BACKBONES:
        return False
    if name.startswith((TIMM_PREFIX, HF_PREFIX)):
        return True
    try:
        import timm

        return bool(timm.is_model(name.split(".", 1)[0]))
    except Exception:  # noqa: BLE001 - timm missing or broken: not a timm name then
        return False


def parse(name: str) -> TimmName:
    """Split ``name`` into what timm builds and where its weights live.

    Raises
    ------
    BackboneWeightsError
        A model name timm does not know, or an ``hf_hub:`` id that is not ``org/name``.
    """
    import timm
    from timm.models import get_pretrained_cfg, is_model_in_modules

    if name.startswith(HF_PREFIX):
        repo = name[len(HF_PREFIX):]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise BackboneWeightsError(f"backbone {name!r}: expected hf_hub:<org>/<name>, e.g. "
                                       "hf_hub:timm/vit_base_patch16_224.augreg_in21k")
        return TimmName(name, f"{HF_PREFIX}{repo}", repo, from_hub=True)
    model = name.removeprefix(TIMM_PREFIX)
    arch = model.split(".", 1)[0]
    if not timm.is_model(arch):
        raise BackboneWeightsError(f"backbone {name!r}: timm has no model {arch!r}; allowed: a "
                                   "project tag, a timm model name (timm.list_models()) or "
                                   "hf_hub:<org>/<name>")
    if not is_model_in_modules(arch, ["vision_transformer"]):
        raise BackboneWeightsError(f"backbone {name!r}: {arch} is not one of timm's "
                                   "VisionTransformer models, which the prompted models need "
                                   "(e.g. vit_base_patch16_224.augreg_in21k)")
    cfg = get_pretrained_cfg(model)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return TimmName(name, model, repo or None, from_hub=False)


def _cached(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename)
    except Exception:  # noqa: BLE001 - any cache problem means "not available offline"
        return None
    return Path(found) if isinstance(found, str) else None


def _download(repo: str, filename: str) -> Path | None:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # noqa: BLE001 - reported as a missing file
        if "404" in str(exc) or "EntryNotFound" in type(exc).__name__:
            return None
        raise BackboneWeightsError(f"download of {filename} from the Hugging Face repository "
                                   f"{repo} failed: {str(exc).splitlines()[0]}") from exc


def _cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        return "~/.cache/huggingface/hub"


def resolve_files(parsed: TimmName, weights: str | Path | None,
                  download: bool) -> Path:
    """The weights file of ``parsed`` (and, for ``hf_hub:``, its cached ``config.json``).

    Raises
    ------
    BackboneWeightsError
        Nothing local and ``download`` is off (the message says how to get the files), or the
        download failed.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(f"backbone {parsed.name!r}: weights file {str(path)!r} "
                                       "not found")
        if not parsed.from_hub:
            return path
    if parsed.repo is None:
        raise BackboneWeightsError(
            f"backbone {parsed.name!r}: timm names no pretrained weights for it; pass "
            "--weights PATH (a timm state dict: .safetensors or .pth)")
    how = (f"re-run with --download on a machine with internet access, or pass --weights PATH "
           f"(the Hugging Face cache searched: {_cache_dir()})")
    needed = ["config.json"] if parsed.from_hub else []
    for filename in needed:
        if _cached(parsed.repo, filename) is None and not (download and _download(
                parsed.repo, filename)):
            raise BackboneWeightsError(f"backbone {parsed.name!r}: {filename} of the Hugging "
                                       f"Face repository {parsed.repo} is not cached; {how}")
    if weights is not None:
        return Path(weights).expanduser()
    for filename in WEIGHT_FILES:
        found = _cached(parsed.repo, filename)
        if found is not None:
            return found
    if download:
        for filename in WEIGHT_FILES:
            found = _download(parsed.repo, filename)
            if found is not None:
                return found
    raise BackboneWeightsError(
        f"backbone {parsed.name!r} needs pretrained weights from the Hugging Face repository "
        f"{parsed.repo}, which are not cached; {how}")


def create(parsed: TimmName, path: Path, img_size: int | None) -> Any:
    """``timm.create_model`` with the weights file ``path``, strictly loaded, no head.

    Raises
    ------
    BackboneWeightsError
        timm cannot build the model or load the file (missing / unexpected keys, shapes), or
        the model is not a timm ``VisionTransformer``.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    kwargs: dict[str, Any] = {"num_classes": 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(parsed.model, pretrained=True,
                                  pretrained_cfg_overlay={"file": str(path), "source": "timm"},
                                  **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm / torch errors: one line, exit 2
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackboneWeightsError(f"backbone {parsed.name!r}: timm cannot build it from "
                                   f"{str(path)!r}: {first[:300]}") from exc
    if not isinstance(model, VisionTransformer):
        raise BackboneWeightsError(f"backbone {parsed.name!r} is a timm "
                                   f"{type(model).__name__}; the prompted models need a timm "
                                   "VisionTransformer (e.g. vit_base_patch16_224.*)")
    _check_strict(parsed, path, model)
    return model


def _check_strict(parsed: TimmName, path: Path, model: Any) -> None:
    """timm loads non-strictly once the head is dropped (``num_classes=0``); check here that
    the file, as timm's filter adapts it, holds every backbone tensor and nothing else but a
    classification head.

    Raises
    ------
    BackboneWeightsError
        Listing the missing and the unexpected keys.
    """
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(load_state_dict(str(path)), model)  # weights_only reading
    expected = set(model.state_dict())
    got = {k for k in state if not k.startswith(HEAD_PREFIXES)}
    problems = []
    if expected - got:
        problems.append(f"missing keys: {_format_keys(sorted(expected - got))}")
    if got - expected:
        problems.append(f"unexpected keys: {_format_keys(sorted(got - expected))}")
    if problems:
        raise BackboneWeightsError(f"backbone {parsed.name!r}: {str(path)!r} does not fit timm's "
                                   f"{parsed.model}: " + "; ".join(problems))
