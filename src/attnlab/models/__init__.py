"""Whole models and the registry: ``create_model(name, **overrides)``, ``list_models(pattern)``."""

from attnlab.models.compact import CompactConfig, CompactTransformer
from attnlab.models.registry import config_from, create_model, is_model, list_models, register_model
from attnlab.models.vit import VisionTransformer, ViTConfig, attention_rollout, resample_pos_embed

__all__ = [
    "config_from", "create_model", "is_model", "list_models", "register_model",
    "ViTConfig", "VisionTransformer", "attention_rollout", "resample_pos_embed",
    "CompactConfig", "CompactTransformer",
]
