"""Interoperability: our models from torchvision, timm and Hugging Face Marian models.

Each foreign model family has one small key map (its names to ours) and one converter that
reads the architecture off the foreign module; loading goes through `unitransformer.adapt`.
A foreign feature we cannot represent exactly is refused with `UnsupportedModelError`
rather than approximated.
"""

from unitransformer.adapt import rename_keys
from unitransformer.interop.marian import marian_state_dict, seq2seq_from_marian
from unitransformer.interop.pretrained import (
    load_pretrained_marian,
    load_pretrained_vit,
    read_state_dict,
    vit_config_from_state_dict,
)
from unitransformer.interop.timm_vit import timm_vit_state_dict, vit_from_timm
from unitransformer.interop.torchvision_vit import (
    torchvision_vit_state_dict,
    vit_from_torchvision,
)
from unitransformer.interop.unsupported import UnsupportedModelError, require

__all__ = [
    "UnsupportedModelError",
    "rename_keys",
    "require",
    "load_pretrained_marian",
    "load_pretrained_vit",
    "marian_state_dict",
    "read_state_dict",
    "seq2seq_from_marian",
    "timm_vit_state_dict",
    "torchvision_vit_state_dict",
    "vit_config_from_state_dict",
    "vit_from_timm",
    "vit_from_torchvision",
]
