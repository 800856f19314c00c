"""torchvision's VisionTransformer (``vit_b_16`` and the other sizes) as our `VisionTransformer`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch import Tensor, nn

from unitransformer.adapt import load_state_dict_strict, rename_keys
from unitransformer.interop.unsupported import require
from unitransformer.layers import hidden_dim
from unitransformer.models.vit import VisionTransformer, ViTConfig

if TYPE_CHECKING:
    import torchvision

__all__ = ["torchvision_vit_state_dict", "vit_from_torchvision"]

# torchvision's names -> ours. MultiheadAttention's in_proj is already q, k, v stacked on
# the output dimension, exactly our fused `qkv`; MLPBlock is Sequential(fc1, GELU, Dropout,
# fc2, Dropout), hence mlp.0 and mlp.3.
_RULES = [
    (r"conv_proj\.", "patch_embed.proj."),
    (r"class_token$", "cls_token"),
    (r"encoder\.pos_embedding$", "pos_embed"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"encoder.blocks.\1.norm1."),
    (r"encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"encoder.blocks.\1.norm2."),
    (
        r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$",
        r"encoder.blocks.\1.attn.qkv.\2",
    ),
    (
        r"encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.",
        r"encoder.blocks.\1.attn.proj.",
    ),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.0\.", r"encoder.blocks.\1.mlp.fc1."),
    (r"encoder\.layers\.encoder_layer_(\d+)\.mlp\.3\.", r"encoder.blocks.\1.mlp.fc2."),
    (r"encoder\.ln\.", "encoder.norm."),
    (r"heads\.head\.", "head."),
]


def torchvision_vit_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ViT state dict with our key names (unknown keys are kept as they are)."""
    return rename_keys(state_dict, _RULES)


def _check_supported(model: nn.Module) -> None:
    name = f"torchvision {type(model).__name__}"
    require(
        isinstance(model.conv_proj, nn.Conv2d),
        name,
        "a convolutional stem (conv_stem_configs) is not a single patch projection",
    )
    heads = list(model.heads.named_children())
    require(
        len(heads) == 1 and heads[0][0] == "head" and isinstance(heads[0][1], nn.Linear),
        name,
        "only a single-Linear head ('heads.head') is supported, but the head is "
        f"{[n for n, _ in heads]} (representation_size={model.representation_size})",
    )
    final = model.encoder.ln
    require(
        type(final) is nn.LayerNorm and final.elementwise_affine and final.bias is not None,
        name,
        f"the final norm {final!r} is not an affine nn.LayerNorm",
    )
    for i, layer in enumerate(model.encoder.layers):
        attn = layer.self_attention
        require(
            attn.batch_first and attn._qkv_same_embed_dim and attn.in_proj_bias is not None,
            name,
            f"encoder layer {i}: self_attention must be batch-first with a fused, biased in_proj",
        )
        require(
            attn.bias_k is None and not attn.add_zero_attn,
            name,
            f"encoder layer {i}: self_attention has bias_k/add_zero_attn",
        )
        act = layer.mlp[1]
        require(
            isinstance(act, nn.GELU) and act.approximate == "none",
            name,
            f"encoder layer {i}: the MLP activation is {act!r}, only exact nn.GELU is supported",
        )
        for norm in (layer.ln_1, layer.ln_2):
            require(
                type(norm) is nn.LayerNorm and norm.elementwise_affine and norm.bias is not None,
                name,
                f"encoder layer {i}: {norm!r} is not an affine nn.LayerNorm",
            )


def _config(model: torchvision.models.VisionTransformer) -> ViTConfig:
    first = model.encoder.layers[0]
    mlp_ratio = model.mlp_dim / model.hidden_dim
    require(
        hidden_dim(model.hidden_dim, mlp_ratio, None) == model.mlp_dim,
        "torchvision VisionTransformer",
        f"mlp_dim={model.mlp_dim} is not a round multiple of hidden_dim={model.hidden_dim}",
    )
    return ViTConfig(
        image_size=model.image_size,
        patch_size=model.patch_size,
        in_chans=model.conv_proj.in_channels,
        num_classes=model.num_classes,
        dim=model.hidden_dim,
        depth=len(model.encoder.layers),
        num_heads=first.self_attention.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        pool="cls",
        dropout=model.dropout,
        attn_dropout=model.attention_dropout,
        norm_eps=first.ln_1.eps,
    )


def vit_from_torchvision(model: torchvision.models.VisionTransformer) -> VisionTransformer:
    """Our `VisionTransformer` with the weights and architecture of a torchvision ViT.

    Args:
        model: A ``torchvision.models.VisionTransformer`` (``vit_b_16``, ``vit_l_32``...,
            or one built with its own sizes).

    Returns:
        The converted model, in eval mode, on the CPU and in the dtype of ``model``.

    Raises:
        UnsupportedModelError: For a convolutional stem, a head other than one Linear layer
            (``representation_size``), or non-standard attention, activation or norms.
    """
    _check_supported(model)
    ours = VisionTransformer(_config(model))
    state = torchvision_vit_state_dict(model.state_dict())
    ours = ours.to(dtype=model.conv_proj.weight.dtype)
    load_state_dict_strict(ours, {k: v.cpu() for k, v in state.items()}, "torchvision ViT")
    return ours.eval()
