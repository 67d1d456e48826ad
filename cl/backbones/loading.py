"""Backbone tags -> frozen timm ``VisionTransformer``: find, read and strictly load the weights.

The tags and their weights files are declared in :mod:`cl.backbones.tags`, the converters of the
original checkpoint layouts live in :mod:`cl.backbones.converters`; both are re-exported here.

Where the weights file comes from, in order: ``--weights PATH``; a file of the expected name in
the weights folder (``$NORGA_WEIGHTS``, default ``~/.cache/norga/weights``); for ``sup21k`` a
copy of ``timm/vit_base_patch16_224.orig_in21k`` in the local Hugging Face cache. Nothing is
downloaded unless asked (:func:`fetch_weights`, the CLI's ``--download``); the error for a
missing file names the URL and both ways to provide it.

Loading is strict: after a tag's converter has unwrapped the checkpoint and set aside the keys
that are known not to belong to the backbone (classification / projection heads, MoCo v3's
momentum encoder and predictor, MoCo v3's final norm), every remaining key must be a backbone
tensor of the right shape and every backbone tensor must be present; otherwise
:class:`BackboneWeightsError` lists the offending keys. The original code instead dropped
non-matching keys silently (docs/cl-background.md#strict-loading).

MoCo v3 (docs/cl-background.md#backbone): the backbone is built with timm's ``fc_norm=True``, so its
final ``norm`` is an ``Identity`` and the checkpoint's ``norm.*`` is not used. The backbone's own
``fc_norm`` stays unused; the prompted model and the TII model each create a fresh, trainable
``fc_norm`` LayerNorm (:func:`cl.models.vit.uses_fc_norm`).

Normalisation: the data transforms are the same for every backbone, as in the original code
(docs/cl-background.md#transforms and #no-backbone-normalisation); timm's pretrained data config
(e.g. mean/std 0.5 for ``orig_in21k``) is deliberately not applied, because the published numbers
were produced without it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from timm.models.vision_transformer import VisionTransformer

from cl.backbones import timm_names
from cl.backbones.converters import (
    HEAD_PREFIXES,
    BackboneWeightsError,
    ConvertedWeights,
    _format_keys,
    convert_dino1k,
    convert_google_vit_npz,
    convert_ibot1k,
    convert_ibot21k,
    convert_mocov3,
    convert_sup21k,
    convert_timm_supervised,
)
from cl.backbones.tags import (
    BACKBONES,
    WEIGHTS_ENV,
    BackboneSpec,
    _spec,
    available_backbones,
    pretrained_backbones,
    weights_dir,
)
from cl.backbones.timm_names import is_timm_name
from cl.run.files import CheckpointError, safe_torch_load
from cl.run.seeding import derive_seed, seeded_global_rng

__all__ = [
    "BACKBONES", "CHECKPOINT_GLOBALS", "HEAD_PREFIXES", "RANDOM_INIT", "WEIGHTS_ENV", "Backbone",
    "BackboneSpec", "BackboneWeightsError", "ConvertedWeights", "available_backbones",
    "build_backbone", "convert_dino1k", "convert_google_vit_npz", "convert_ibot1k",
    "convert_ibot21k", "convert_mocov3", "convert_sup21k", "convert_timm_supervised",
    "ensure_weights", "fetch_weights", "file_sha256", "load_backbone_weights",
    "pretrained_backbones", "read_checkpoint", "resolve_weights", "weights_dir",
]

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"


# ----------------------------------------------------------------------------- files


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hf_cached(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "model.safetensors")
    except Exception:  # noqa: BLE001 - any cache problem means "not available offline"
        return None
    return Path(cached) if isinstance(cached, str) else None


def resolve_weights(name: str, weights: str | Path | None = None) -> Path | None:
    """The weights file of ``name`` (``None`` for random-init tags).

    Raises
    ------
    BackboneWeightsError
        ``weights`` does not exist, is given for a random-init tag, or no local copy is found;
        the message says where to download the file and how to pass it.
    """
    spec = _spec(name)
    if not spec.pretrained:
        if weights is not None:
            raise BackboneWeightsError(
                f"backbone {name!r} is randomly initialised and takes no --weights; pretrained "
                f"tags: {', '.join(pretrained_backbones())}"
            )
        return None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            what = ("is a folder, not a weights file" if path.is_dir() else
                    "is not a regular file (a device or pipe)" if path.exists() else
                    "not found")
            raise BackboneWeightsError(
                f"backbone {name!r}: weights file {str(path)!r} {what}; {spec.how_to_get()}"
            )
        return path
    local = weights_dir() / str(spec.filename)
    if local.is_file():
        return local
    cached = _hf_cached(spec.hf_hub_id) if spec.hf_hub_id else None
    if cached is not None:
        return cached
    raise BackboneWeightsError(
        f"backbone {name!r} ({spec.paper_name}) needs pretrained weights that are not available "
        f"locally; {spec.how_to_get()}"
    )


def fetch_weights(name: str, directory: str | Path | None = None, *,
                  fetch: Any = None, attempts: int = 3) -> Path:
    """Download the weights of ``name`` into ``directory`` (default :func:`weights_dir`).

    An existing file is returned as is; a partial download is resumed. No checksum is published
    for these files, so the SHA-256 of what was downloaded is logged and recorded in ``env.json``
    by the run.

    Raises
    ------
    BackboneWeightsError
        Random-init tag, or the download failed (e.g. no internet).
    """
    from cl.data.download import Resource, download
    from cl.data.registry import DatasetError

    spec = _spec(name)
    if not spec.pretrained or spec.url is None or spec.filename is None:
        raise BackboneWeightsError(f"backbone {name!r} has no weights to download")
    folder = Path(directory) if directory is not None else weights_dir()
    target = folder / spec.filename
    if target.is_file():
        return target
    try:
        return download(Resource(spec.filename, (spec.url,)), folder, fetch=fetch,
                        attempts=attempts)
    except (DatasetError, OSError) as exc:
        raise BackboneWeightsError(
            f"backbone {name!r}: download failed: {str(exc).splitlines()[0]}"
        ) from exc


# The only non-tensor classes a weights file may hold: the training arguments that DINO / iBOT /
# MoCo v3 training checkpoints pickle along with the weights. Everything else is refused.
CHECKPOINT_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


def read_checkpoint(path: str | Path) -> Any:
    """Load a ``.safetensors``, ``.npz`` or torch checkpoint file on the CPU, as data only.

    ``.npz`` files are read without pickles, torch files with ``weights_only=True`` plus
    :data:`CHECKPOINT_GLOBALS`; nothing in a weights file can run code.

    Raises
    ------
    BackboneWeightsError
        A torch file names a Python object outside the allow-list, or is not a checkpoint.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    try:
        return safe_torch_load(path, CHECKPOINT_GLOBALS, what="the file")
    except CheckpointError as exc:
        raise BackboneWeightsError(str(exc)) from None


# ----------------------------------------------------------------------------- loading


def load_backbone_weights(model: VisionTransformer, name: str, checkpoint: Any,
                          *, where: str = "checkpoint") -> ConvertedWeights:
    """Convert ``checkpoint`` with the converter of ``name`` and load it strictly into ``model``.

    Parameters
    ----------
    model:
        A timm ``VisionTransformer`` built with ``num_classes=0`` (and ``fc_norm=True`` for
        MoCo v3, whose fresh ``fc_norm`` is the only backbone tensor not taken from the file).
    name:
        Backbone tag (selects the converter).
    checkpoint:
        The loaded file (:func:`read_checkpoint`).
    where:
        File name for error messages.

    Raises
    ------
    BackboneWeightsError
        Missing backbone keys, unexpected keys or shape mismatches, each listed by name.
    """
    spec = _spec(name)
    if spec.convert is None:
        raise BackboneWeightsError(f"backbone {name!r} takes no weights")
    weights = spec.convert(checkpoint)
    target = model.state_dict()
    fresh = {k for k in target if spec.fc_norm and k.startswith("fc_norm.")}
    expected = set(target) - fresh
    missing = sorted(expected - set(weights.state))
    unexpected = sorted(set(weights.state) - expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_format_keys(unexpected)}")
    shapes = [f"{k} {tuple(weights.state[k].shape)} vs model {tuple(target[k].shape)}"
              for k in sorted(expected & set(weights.state))
              if weights.state[k].shape != target[k].shape]
    if shapes:
        problems.append(f"shape mismatches: {_format_keys(shapes, limit=4)}")
    if problems:
        raise BackboneWeightsError(
            f"backbone {name!r}: {where} ({weights.source}) does not fit the "
            f"{spec.paper_name or name} ViT: " + "; ".join(problems)
        )
    full = {**target, **weights.state}
    model.load_state_dict(full, strict=True)
    for reason, keys in weights.ignored.items():
        log.info("backbone %s: set aside %d keys (%s)", name, len(keys), reason)
    return weights


@dataclass
class Backbone:
    """A built backbone and its provenance (goes into ``env.json``)."""

    model: VisionTransformer
    name: str
    img_size: int
    weights_path: str | None
    weights_sha256: str
    source: str = ""
    ignored: dict[str, int] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "img_size": self.img_size,
            "weights_path": self.weights_path,
            "weights_sha256": self.weights_sha256,
            "random_init": self.weights_sha256 == RANDOM_INIT,
            "checkpoint_format": self.source or None,
            "ignored_keys": dict(self.ignored),
            "fc_norm": BACKBONES[self.name].fc_norm if self.name in BACKBONES else False,
        }


def build_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    img_size: int | None = None,
    seed: int = 0,
) -> Backbone:
    """Build a frozen ViT for ``name`` with ``num_classes=0`` (no head).

    Parameters
    ----------
    name:
        A tag of :func:`available_backbones`, or a timm model name / ``timm:<name>`` /
        ``hf_hub:<org>/<name>`` (:mod:`cl.backbones.timm_names`; weights from ``weights`` or
        the Hugging Face cache).
    weights:
        Local weights file for pretrained tags (an error for random-init tags).
    img_size:
        Input size; random-init backbones follow the data, pretrained ones default to 224.
    seed:
        Run seed; random-init weights are drawn from a stream derived from it.

    Raises
    ------
    ValueError
        Unknown tag (the message lists the allowed ones).
    BackboneWeightsError
        Pretrained weights missing, unreadable or not matching the architecture.
    """
    if is_timm_name(name):
        return _build_timm_backbone(name, weights, img_size, seed)
    spec = _spec(name)
    size = int(img_size or spec.default_img_size)
    path = resolve_weights(name, weights)  # fails before any work when the file is missing
    with seeded_global_rng(derive_seed(seed, f"backbone/{name}")):
        model = VisionTransformer(img_size=size, num_classes=0, **spec.arch)
    source, ignored = "", {}
    if path is None:
        sha = RANDOM_INIT
    else:
        sha = file_sha256(path)
        if spec.sha256 is not None and weights is None and sha != spec.sha256:
            raise BackboneWeightsError(
                f"backbone {name!r}: {str(path)!r} has SHA-256 {sha}, not the published "
                f"{spec.sha256}; the file is damaged or a different checkpoint; delete it and "
                "download it again")
        try:
            checkpoint = read_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - report any reader failure as one clear line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BackboneWeightsError(
                f"backbone {name!r}: cannot read {str(path)!r}: {first}"
            ) from exc
        converted = load_backbone_weights(model, name, checkpoint, where=str(path))
        source = converted.source
        ignored = {reason: len(keys) for reason, keys in converted.ignored.items()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("backbone %s (%s), img_size %d", name, sha, size)
    return Backbone(model, name, size, str(path) if path else None, sha, source, ignored)


def _build_timm_backbone(name: str, weights: str | Path | None, img_size: int | None,
                         seed: int) -> Backbone:
    """A ``timm:``/``hf_hub:``/timm-model-name backbone (:mod:`cl.backbones.timm_names`)."""
    parsed = timm_names.parse(name)
    path = timm_names.resolve_files(parsed, weights, download=False)
    sha = file_sha256(path)
    with seeded_global_rng(derive_seed(seed, f"backbone/{name}")):
        model = timm_names.create(parsed, path, img_size)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    size = int(model.patch_embed.img_size[0])
    log.info("backbone %s (%s), img_size %d", name, sha, size)
    return Backbone(model, name, size, str(path), sha, f"timm {parsed.model}")


def ensure_weights(name: str, weights: str | Path | None = None) -> Path | None:
    """:func:`resolve_weights`, downloading the file into :func:`weights_dir` when it is missing
    (for a timm-style name: into the Hugging Face cache).

    An explicit ``weights`` path is never replaced by a download (a wrong path stays an error).
    """
    if is_timm_name(name):
        return timm_names.resolve_files(timm_names.parse(name), weights, download=True)
    spec = _spec(name)
    if not spec.pretrained or weights is not None:
        return resolve_weights(name, weights)
    try:
        return resolve_weights(name)
    except BackboneWeightsError:
        return fetch_weights(name)
