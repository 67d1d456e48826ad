"""Backbone tags of the SMoPE and CODA-Prompt protocols: ``sup1k``, ``sup21k-augreg`` and
``sup21k-ft1k`` (issue 19, point 2).

Official sources:

* Minhchuyentoancbn/SMoPE @ 27b982c ``models/zoo.py`` lines 724-739: ``sup21k`` loads
  ``pretrained/vit_base_patch16_224_augreg_in21k.bin``, ``sup1k`` (the ``--pretrained_weight``
  default, ``run.py`` line 139) ``pretrained/vit_base_patch16_224_augreg2_in21k_ft_in1k.bin``,
  both "with head" (``del load_dict['head.weight']``); the README links the HF
  ``pytorch_model.bin`` of ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`` and
  ``timm/vit_base_patch16_224.augreg_in21k``; ``experiments/cub-200.sh`` line 31 passes
  ``--pretrained_weigh sup21k``.
* GT-RIPL/CODA-Prompt @ 6417d4f ``models/zoo.py`` lines 368-371:
  ``vit_base_patch16_224(pretrained=True)`` with ``timm==0.4.12`` (``requirements.txt``), whose
  default weights are ``augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--
  imagenet2012-steps_20k-lr_0.01-res_224.npz`` (timm 0.4.12 ``vision_transformer.py`` lines
  84-86), i.e. timm >= 0.9's ``vit_base_patch16_224.augreg_in21k_ft_in1k``.

The fixtures are tiny ViTs exported in each original layout: the timm state dict with its
classification head (``.bin`` via ``torch.save``, ``.safetensors``) and the AugReg ``.npz``
(Flax names, no representation layer, 21k head); timm's own npz loader is the independent
reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_cl_backbones import _tiny_spec, random_timm_state, tiny_vit, to_google_npz
from timm.models import get_pretrained_cfg
from timm.models.vision_transformer import _load_weights as timm_load_npz

from cl.backbones import loading as bb
from cl.backbones.loading import (
    BACKBONES,
    BackboneWeightsError,
    build_backbone,
    load_backbone_weights,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TAGS = {  # tag -> timm >= 0.9 pretrained tag
    "sup1k": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "sup21k-augreg": "vit_base_patch16_224.augreg_in21k",
    "sup21k-ft1k": "vit_base_patch16_224.augreg_in21k_ft_in1k",
}


@pytest.fixture(autouse=True)
def _no_local_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bb.WEIGHTS_ENV, str(tmp_path / "weights-cache"))
    monkeypatch.setattr(bb, "_hf_cached", lambda repo_id: None)


def with_head(state: dict[str, torch.Tensor], classes: int) -> dict[str, torch.Tensor]:
    """The HF ``pytorch_model.bin`` layout: timm names plus the classification head."""
    return {**state, "head.weight": torch.ones(classes, 32), "head.bias": torch.ones(classes)}


def augreg_npz(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """AugReg ``.npz``: the Google layout without the ``pre_logits`` representation layer."""
    return {k: v for k, v in to_google_npz(state).items() if not k.startswith("pre_logits/")}


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_specs_name_the_published_files(tag: str) -> None:
    spec, cfg = BACKBONES[tag], get_pretrained_cfg(TAGS[tag])
    assert spec.pretrained and spec.arch["embed_dim"] == 768 and not spec.fc_norm
    assert spec.hf_hub_id == cfg.hf_hub_id == f"timm/{TAGS[tag]}"
    if tag == "sup1k":  # timm's own fine-tune: published on the HF hub only
        assert spec.filename == "vit_base_patch16_224_augreg2_in21k_ft_in1k.bin"  # SMoPE's name
        assert spec.url.endswith(f"/{cfg.hf_hub_id}/resolve/main/pytorch_model.bin")
    else:  # the original AugReg release: the .npz timm's registry points to
        assert spec.url == cfg.url and spec.filename == cfg.url.rsplit("/", 1)[1]
        assert spec.filename.endswith(".npz")


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
@pytest.mark.parametrize("tag", sorted(TAGS))
def test_timm_state_dict_with_head_loads_strictly(tag: str, suffix: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_spec(monkeypatch, tag)
    source = random_timm_state(seed=5)
    path = tmp_path / f"{BACKBONES[tag].filename.rsplit('.', 1)[0]}{suffix}"
    checkpoint = with_head(source, 21843 if tag == "sup21k-augreg" else 1000)
    if suffix == ".bin":
        torch.save(checkpoint, path)
    else:
        save_file(checkpoint, str(path))
    built = build_backbone(tag, weights=path)
    for key, value in source.items():
        assert torch.equal(built.model.state_dict()[key], value), key
    assert built.ignored == {"classification head": 2} and built.source == "timm-state-dict"
    assert all(not p.requires_grad for p in built.model.parameters())


@pytest.mark.parametrize("tag", ["sup21k-augreg", "sup21k-ft1k"])
@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_augreg_npz_matches_timm_loader(tag: str, prefix: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_spec(monkeypatch, tag)
    source = random_timm_state(seed=6)
    arrays = {f"{prefix}{k}": v for k, v in augreg_npz(source).items()}
    path = tmp_path / BACKBONES[tag].filename
    np.savez(path, **arrays)
    built = build_backbone(tag, weights=path)
    assert built.source == "google-vit-npz"
    reference = tiny_vit()
    timm_load_npz(reference, str(path))  # independent reference: timm's own npz loader
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(built.model.state_dict()[key], value, rtol=0, atol=1e-6)
        if key in source:
            torch.testing.assert_close(built.model.state_dict()[key], source[key])


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_strict_loading_names_missing_and_unexpected_keys(tag: str) -> None:
    source = random_timm_state(seed=7)
    state = with_head(source, 1000)
    del state["blocks.1.mlp.fc2.bias"]
    with pytest.raises(BackboneWeightsError, match=r"missing keys: blocks\.1\.mlp\.fc2\.bias"):
        load_backbone_weights(tiny_vit(), tag, state)
    with pytest.raises(BackboneWeightsError, match="unexpected keys: fc_norm.weight"):
        load_backbone_weights(tiny_vit(), tag, {**source, "fc_norm.weight": torch.ones(32)})
    arrays = augreg_npz(source)
    del arrays["Transformer/encoderblock_0/LayerNorm_2/scale"]
    with pytest.raises(BackboneWeightsError, match="LayerNorm_2/scale"):
        load_backbone_weights(tiny_vit(), tag, arrays)
    with pytest.raises(BackboneWeightsError, match=f"{tag} checkpoint"):
        load_backbone_weights(tiny_vit(), tag, {"model": {"x": torch.ones(1)}, "epoch": 3})


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_missing_file_message_names_the_source(tag: str) -> None:
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone(tag)
    message = str(err.value)
    assert BACKBONES[tag].url in message and "--weights" in message and "\n" not in message
