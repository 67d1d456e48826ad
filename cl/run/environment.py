"""What ``env.json`` records: software versions, git state and the device."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from norga import provenance

_PACKAGES = ("torch", "timm", "numpy", "scikit-learn", "scipy", "tqdm")


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """Commit SHA and dirty flag of the repository holding this package (if any); only the
    CL code (``cl/``, ``experiments/``, untracked files included) makes it dirty."""
    return provenance.git_state(("cl", "experiments"), repo=repo)


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["cuda_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, platform, git and device."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "git": git_state(),
        **device_info(device),
    }
