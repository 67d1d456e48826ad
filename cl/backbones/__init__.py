"""Pretrained ViT backbones: weights files and strict loading (:mod:`cl.backbones.loading`), the
tag table and weights folder (:mod:`cl.backbones.tags`) and checkpoint converters
(:mod:`cl.backbones.converters`)."""
