"""timm's VisionTransformer (class-token or mean-pooled, learned positions) as ours."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from unitransformer.adapt import load_state_dict_strict, rename_keys
from unitransformer.interop.unsupported import require
from unitransformer.layers import hidden_dim
from unitransformer.models.vit import VisionTransformer, ViTConfig

__all__ = ["timm_vit_state_dict", "vit_from_timm"]

# timm's names -> ours; patch_embed.proj, cls_token, pos_embed and head already agree.
_RULES = [
    (r"blocks\.(\d+)\.", r"encoder.blocks.\1."),
    (r"norm\.", "encoder.norm."),
]


def timm_vit_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A timm ViT state dict with our key names (unknown keys are kept as they are).

    A class-token model whose positions skip the class token (timm's ``no_embed_class``,
    recognised by a square number of position rows) gets a zero class-token position:
    adding zero to the token before the blocks is exactly what timm does.
    """
    out = rename_keys(state_dict, _RULES)
    pos = out.get("pos_embed")
    if "cls_token" in out and pos is not None and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        out["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
    return out


def _check_model(model: Any, name: str) -> None:
    pe = model.patch_embed
    require(type(pe).__name__ == "PatchEmbed", name, f"patch embedding {type(pe).__name__}")
    require(pe.img_size[0] == pe.img_size[1], name, f"non-square img_size {pe.img_size}")
    require(pe.patch_size[0] == pe.patch_size[1], name, f"non-square patch {pe.patch_size}")
    require(
        isinstance(pe.norm, nn.Identity) and pe.proj.bias is not None,
        name,
        "a normalized or bias-free patch embedding (embed_norm_layer / pre_norm)",
    )
    require(not pe.dynamic_img_pad, name, "dynamic_img_pad (images padded to the patch size)")
    require(model.num_reg_tokens == 0, name, f"{model.num_reg_tokens} register tokens")
    require(model.pos_embed is not None, name, "no learned position embedding (pos_embed='none')")
    require(isinstance(model.norm_pre, nn.Identity), name, "pre_norm (a norm before the blocks)")
    require(getattr(model, "attn_pool", None) is None, name, f"{model.global_pool!r} pooling")
    require(
        type(model.patch_drop).__name__ in ("Identity", "PatchDropout"),
        name,
        f"patch dropout {type(model.patch_drop).__name__}",
    )
    if model.has_class_token:
        require(
            model.global_pool == "token",
            name,
            f"global_pool={model.global_pool!r} with a class token; only 'token' pooling, or "
            "'avg' pooling without a class token, maps onto our pool='cls' / pool='mean'",
        )
    else:
        require(
            model.global_pool == "avg" and not model.pool_include_prefix,
            name,
            f"global_pool={model.global_pool!r} without a class token; only 'avg' is supported",
        )
    # Ours normalizes the tokens, then pools; timm's fc_norm pools, then normalizes. The two
    # differ (a mean of normalized vectors is not normalized), so only norm-then-pool maps.
    require(
        isinstance(model.fc_norm, nn.Identity),
        name,
        "fc_norm (LayerNorm after pooling; ours normalizes before pooling, which differs). "
        "A model built with fc_norm=False maps exactly",
    )
    _check_norm(model.norm, name, "final norm")


def _check_norm(norm: nn.Module, name: str, where: str) -> None:
    require(
        isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None,
        name,
        f"{where} is {type(norm).__name__}, only an affine LayerNorm is supported",
    )


def _check_block(block: nn.Module, i: int, name: str) -> None:
    where = f"block {i}"
    require(type(block).__name__ == "Block", name, f"{where} is a {type(block).__name__}")
    _check_norm(block.norm1, name, f"{where} norm1")
    _check_norm(block.norm2, name, f"{where} norm2")
    attn, mlp = block.attn, block.mlp
    require(type(attn).__name__ == "Attention", name, f"{where} attention {type(attn).__name__}")
    require(
        all(
            isinstance(getattr(attn, n, nn.Identity()), nn.Identity)
            for n in ("q_norm", "k_norm", "norm")
        ),
        name,
        f"{where} uses qk_norm or scale_attn_norm",
    )
    require(
        attn.proj.bias is not None and mlp.fc1.bias is not None and mlp.fc2.bias is not None,
        name,
        f"{where} has bias-free projections (proj_bias=False)",
    )
    require(
        isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity),
        name,
        f"{where} uses layer scale (init_values)",
    )
    require(type(mlp).__name__ == "Mlp", name, f"{where} MLP is a {type(mlp).__name__}")
    require(isinstance(mlp.norm, nn.Identity), name, f"{where} MLP has a norm (scale_mlp_norm)")
    act = mlp.act
    require(
        isinstance(act, nn.GELU) and act.approximate == "none",
        name,
        f"{where} activation is {type(act).__name__}, only exact GELU is supported",
    )


def _config(model: Any) -> ViTConfig:
    first, last = model.blocks[0], model.blocks[-1]
    dim = model.embed_dim
    require(
        first.attn.num_heads * first.attn.head_dim == dim,
        "timm VisionTransformer",
        f"attention width {first.attn.num_heads}x{first.attn.head_dim} differs from embed_dim={dim}",
    )
    mlp_ratio = first.mlp.fc1.out_features / dim
    eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    require(len(eps) == 1, "timm VisionTransformer", f"LayerNorms with different eps {eps}")
    return ViTConfig(
        image_size=model.patch_embed.img_size[0],
        patch_size=model.patch_embed.patch_size[0],
        in_chans=model.patch_embed.proj.in_channels,
        num_classes=model.num_classes,
        dim=dim,
        depth=len(model.blocks),
        num_heads=first.attn.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=first.attn.qkv.bias is not None,
        pool="cls" if model.has_class_token else "mean",
        dropout=first.attn.proj_drop.p,
        attn_dropout=first.attn.attn_drop.p,
        drop_path=float(getattr(last.drop_path1, "drop_prob", 0.0)),
        norm_eps=eps.pop(),
    )


def vit_from_timm(model: Any) -> VisionTransformer:
    """Our `VisionTransformer` with the weights and architecture of a timm ViT.

    Supported: class-token models with ``global_pool='token'`` (``vit_base_patch16_224``
    and kin, with or without ``no_embed_class``), and models without a class token with
    ``global_pool='avg', fc_norm=False``. ``dynamic_img_size`` is accepted: our model also
    resamples its positions bicubically for other image sizes (without timm's antialiasing,
    which only changes the result when shrinking the grid).

    Args:
        model: A ``timm.models.vision_transformer.VisionTransformer``.

    Returns:
        The converted model, in eval mode, on the CPU and in the dtype of ``model``.

    Raises:
        UnsupportedModelError: Naming the feature we do not model: register tokens, layer
            scale, qk_norm, non-LayerNorm norms, pre_norm, fc_norm, attention pooling, ...
    """
    name = f"timm {type(model).__name__}"
    require(
        type(model).__name__ == "VisionTransformer" and hasattr(model, "blocks"),
        name,
        "only timm.models.vision_transformer.VisionTransformer is supported",
    )
    _check_model(model, name)
    for i, block in enumerate(model.blocks):
        _check_block(block, i, name)
    config = _config(model)
    require(
        hidden_dim(config.dim, config.mlp_ratio, None) == model.blocks[0].mlp.fc1.out_features,
        name,
        "the MLP width is not a round multiple of embed_dim",
    )
    ours = VisionTransformer(config).to(dtype=model.patch_embed.proj.weight.dtype)
    state = {k: v.cpu() for k, v in timm_vit_state_dict(model.state_dict()).items()}
    load_state_dict_strict(ours, state, "timm ViT")
    return ours.eval()
