"""Canonical names of datasets, backbones and methods.

Run directories, the published-results data file and the figure code may spell the same
thing differently (``"Sup-21K"``, ``"sup21k"``, ``"vit_base_patch16_224.orig_in21k"``).
Everything is mapped to one canonical key here, so that "the setting matches" means the same
thing for tables and figures.
"""

from __future__ import annotations

import hashlib
import re

DATASET_LABELS: dict[str, str] = {
    "cifar100": "Split CIFAR-100",
    "imagenet-r": "Split ImageNet-R",
    "cub200": "Split CUB-200",
    "5datasets": "5-Datasets",
    "synthetic": "Synthetic",
    "digits": "Digits",
}
BACKBONE_LABELS: dict[str, str] = {
    "sup21k": "Sup-21K",
    "ibot21k": "iBOT-21K",
    "ibot1k": "iBOT-1K",
    "dino1k": "DINO-1K",
    "moco1k": "MoCo-1K",
    "sup1k": "Sup-1K",
    "sup21k-augreg": "Sup-21K (AugReg)",
    "sup21k-ft1k": "Sup-21K-ft-1K (AugReg)",
}

_DATASET_ALIASES = {
    "cifar100": "cifar100",
    "splitcifar100": "cifar100",
    "cifar": "cifar100",
    "imagenetr": "imagenet-r",
    "imr": "imagenet-r",
    "splitimagenetr": "imagenet-r",
    "inr": "imagenet-r",
    "cub200": "cub200",
    "cub": "cub200",
    "splitcub200": "cub200",
    "5datasets": "5datasets",
    "fivedatasets": "5datasets",
}
_BACKBONE_ALIASES = {
    "sup21k": "sup21k",
    "vitbasepatch16224": "sup21k",
    "vitbasepatch16224origin21k": "sup21k",
    "ibot21k": "ibot21k",
    "vitbasepatch1622421kibot": "ibot21k",
    "ibot1k": "ibot1k",
    "ibot": "ibot1k",
    "vitbasepatch16224ibot": "ibot1k",
    "dino1k": "dino1k",
    "dino": "dino1k",
    "vitbasepatch16224dino": "dino1k",
    "moco1k": "moco1k",
    "moco": "moco1k",
    "mocov3": "moco1k",
    "mocov31k": "moco1k",  # cl.backbones.loading tag "mocov3-1k"
    "vitbasepatch16224mocov3": "moco1k",
    "sup1k": "sup1k",
    "vitbasepatch16224augreg2in21kftin1k": "sup1k",
    "sup21kaugreg": "sup21k-augreg",
    "vitbasepatch16224augregin21k": "sup21k-augreg",
    "sup21kft1k": "sup21k-ft1k",  # CODA-Prompt's backbone (timm 0.4.12 vit_base_patch16_224)
    "vitbasepatch16224augregin21kftin1k": "sup21k-ft1k",
}
_METHOD_ALIASES = {
    "norga": "norga",
    "hide": "hide",
    "hideprompt": "hide",
    "l2p": "l2p",
    "l2ppp": "l2p",
    "deepl2ppp": "l2p",
    "dualprompt": "dualprompt",
    "dual": "dualprompt",
    "sprompt": "sprompt",
    "sprompts": "sprompt",
    "spromptpp": "sprompt",
    "codaprompt": "coda-prompt",
    "coda": "coda-prompt",
    "smope": "smope",
    "ovor": "ovor",
    "vqprompt": "vq-prompt",
}


def _key(name: str) -> str:
    # "Deep L2P++" -> "deepl2ppp", "vit_base_patch16_224.orig_in21k" -> "vitbasepatch16224origin21k"
    return re.sub(r"[^a-z0-9]", "", str(name).lower().replace("+", "p"))


def canonical_dataset(name: str) -> str:
    """Canonical dataset key (``cifar100``, ``imagenet-r``, ``cub200``, ``5datasets``, ...)."""
    return _DATASET_ALIASES.get(_key(name), str(name).lower())


def canonical_backbone(name: str) -> str:
    """Canonical backbone key (``sup21k``, ``ibot21k``, ``ibot1k``, ``dino1k``, ``moco1k``, ...)."""
    return _BACKBONE_ALIASES.get(_key(name), str(name).lower())


def canonical_method(name: str) -> str:
    """Canonical method key (``norga``, ``hide``, ``l2p``, ``dualprompt``, ``sprompt``, ...)."""
    return _METHOD_ALIASES.get(_key(name), str(name).lower())


def dataset_label(name: str) -> str:
    """Display name of a dataset."""
    return DATASET_LABELS.get(canonical_dataset(name), name)


def backbone_label(name: str) -> str:
    """Display name of a backbone."""
    return BACKBONE_LABELS.get(canonical_backbone(name), name)


#: Longest file-name part :func:`safe_slug` returns (file systems allow 255 bytes per name;
#: figure names add a kind prefix and a suffix).
SLUG_MAX = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_slug(name: object, max_len: int = SLUG_MAX) -> str:
    """``name`` as one safe part of a file name (for names read from result files).

    ASCII letters, digits, ``.``, ``_`` and ``-`` are kept; every other run of characters
    (``/``, ``\\``, NUL, spaces, non-ASCII) becomes ``-``; leading dots and dashes are dropped,
    so the result is never ``..``, hidden, absolute or a path. A name that had to be changed or
    shortened gets an 8-hex-digit hash of the original, so two different names never share a
    slug (``"a/b"`` and ``"a-b"`` stay apart); a name that is already safe is returned as is.

    Examples
    --------
    >>> safe_slug("imagenet-r")
    'imagenet-r'
    >>> safe_slug("../../victim/important").startswith("victim-important-")
    True
    """
    text = str(name)
    slug = _UNSAFE.sub("-", text).lstrip(".-")
    if slug == text and 0 < len(slug) <= max_len:
        return slug
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = slug[: max(max_len - 9, 1)].rstrip(".-")
    return f"{stem}-{digest}" if stem else f"x-{digest}"
