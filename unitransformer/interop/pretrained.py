"""Pretrained weights from a local file or directory, or by hub name when online.

ViTs come from torchvision (``vit_b_16``, ``ViT_B_16_Weights.IMAGENET1K_V1``), timm
(``vit_base_patch16_224``, ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``), a state-dict
file of either (or of ours), or a timm model directory; translation models come from a
Hugging Face Marian directory or hub name. Checkpoints are read without executing code.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from unitransformer.adapt import load_state_dict_strict, resample_pos_embed, reset_head
from unitransformer.errors import UserError
from unitransformer.interop.marian import seq2seq_from_marian
from unitransformer.interop.timm_vit import timm_vit_state_dict, vit_from_timm
from unitransformer.interop.torchvision_vit import torchvision_vit_state_dict, vit_from_torchvision
from unitransformer.models.seq2seq import Seq2SeqTransformer
from unitransformer.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "load_pretrained_marian",
    "load_pretrained_vit",
    "read_state_dict",
    "vit_config_from_state_dict",
]

_STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# A state dict does not store the number of heads; these are the standard ViT widths'
# (Ti, S, M, B, L, H, g). Other widths fall back to heads of 64 channels.
_HEADS_BY_DIM = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1280: 16, 1408: 16}
# Training checkpoints wrap the weights; these are the usual wrappers, best first.
_WRAPPERS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Reads a state dict from a ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file.

    Pickled files are read with ``weights_only=True``, so they cannot execute code. A
    training checkpoint's wrapper (``state_dict``, ``model``...) and DDP's ``module.``
    prefixes are removed.

    Raises:
        UserError: Naming the file: a wrong suffix, an unreadable file, or no tensors inside.
    """
    path = Path(path)
    if path.suffix not in _STATE_DICT_SUFFIXES:
        raise UserError(
            f"{path}: expected a state-dict file ending in {', '.join(_STATE_DICT_SUFFIXES)}"
        )
    try:
        if path.suffix == ".safetensors":
            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        ValueError,
        EOFError,
        pickle.UnpicklingError,
        SafetensorError,
    ) as exc:
        raise UserError(f"{path}: cannot read it as a state dict ({_brief(exc)})") from exc
    while isinstance(data, Mapping) and not all(isinstance(v, Tensor) for v in data.values()):
        inner = next((data[k] for k in _WRAPPERS if isinstance(data.get(k), Mapping)), None)
        if inner is None:
            break
        data = inner
    if (
        not isinstance(data, Mapping)
        or not data
        or not all(isinstance(v, Tensor) for v in data.values())
    ):
        raise UserError(f"{path}: expected a mapping of parameter names to tensors")
    return {re.sub(r"^module\.", "", k): v for k, v in data.items()}


def _to_our_keys(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    # Which library wrote the file shows in its names.
    if "conv_proj.weight" in state_dict:
        return torchvision_vit_state_dict(state_dict)
    if "blocks.0.attn.qkv.weight" in state_dict:
        return timm_vit_state_dict(state_dict)
    if "encoder.blocks.0.attn.qkv.weight" in state_dict:
        return dict(state_dict)
    raise UserError(
        f"{source}: not a torchvision, timm or unitransformer ViT state dict (no conv_proj.weight, "
        "blocks.0.attn.qkv.weight or encoder.blocks.0.attn.qkv.weight)"
    )


def _shape(state_dict: Mapping[str, Tensor], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in state_dict or state_dict[key].ndim != ndim:
        raise UserError(f"{source}: expected a {ndim}-d tensor {key!r} (in our names)")
    return tuple(state_dict[key].shape)


def vit_config_from_state_dict(
    state_dict: Mapping[str, Tensor], source: str = "state dict", num_heads: int | None = None
) -> ViTConfig:
    """The `ViTConfig` a state dict in our key names was made for, read off tensor shapes.

    Args:
        state_dict: Weights under our names (see `timm_vit_state_dict`...).
        source: Where they came from, for error messages.
        num_heads: Attention heads; a state dict does not record them, so by default they
            are those of the standard ViT of that width (else ``dim // 64``).

    Raises:
        UserError: Naming ``source`` when a needed tensor is missing or the grid is not square.
    """
    dim, in_chans, patch, _ = _shape(state_dict, "patch_embed.proj.weight", 4, source)
    tokens = _shape(state_dict, "pos_embed", 3, source)[1]
    prefix = 1 if "cls_token" in state_dict else 0
    side = math.isqrt(tokens - prefix)
    if side * side != tokens - prefix:
        raise UserError(f"{source}: {tokens - prefix} patch positions are not a square grid")
    blocks = {int(m[1]) for k in state_dict if (m := re.match(r"encoder\.blocks\.(\d+)\.", k))}
    if not blocks:
        raise UserError(f"{source}: no encoder blocks")
    mlp = _shape(state_dict, "encoder.blocks.0.mlp.fc1.weight", 2, source)[0]
    if num_heads is None:
        num_heads = _HEADS_BY_DIM.get(dim, max(dim // 64, 1))
    head = state_dict.get("head.weight")
    return ViTConfig(
        image_size=side * patch,
        patch_size=patch,
        in_chans=in_chans,
        num_classes=0 if head is None else head.shape[0],
        dim=dim,
        depth=max(blocks) + 1,
        num_heads=num_heads,
        mlp_ratio=mlp / dim,
        qkv_bias="encoder.blocks.0.attn.qkv.bias" in state_dict,
        pool="cls" if prefix else "mean",
        norm_eps=1e-6,  # torchvision's and timm's ViTs both use 1e-6
    )


def _vit_from_file(path: Path, num_heads: int | None) -> VisionTransformer:
    state = _to_our_keys(read_state_dict(path), str(path))
    config = vit_config_from_state_dict(state, str(path), num_heads)
    try:
        model = VisionTransformer(config)
    except ValueError as exc:  # e.g. a width the head count does not divide
        raise UserError(f"{path}: cannot build a ViT from its shapes ({_brief(exc)})") from exc
    load_state_dict_strict(model, state, str(path))
    return model.eval()


def _vit_from_directory(path: Path) -> VisionTransformer:
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_file}: expected a timm model config ({_brief(exc)})") from exc
    if not isinstance(config, dict) or "architecture" not in config:
        raise UserError(f"{config_file}: expected a timm model config with an 'architecture' key")
    import timm

    try:
        model = timm.create_model(f"local-dir:{path}", pretrained=True)
    except Exception as exc:  # timm raises many kinds; the user needs the directory named
        raise UserError(f"{path}: timm could not load the model ({_brief(exc)})") from exc
    return vit_from_timm(model)


def _brief(exc: Exception, limit: int = 240) -> str:
    # Library errors span lines; the command line prints the message as one line.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download_failed(source: str, exc: Exception) -> UserError:
    return UserError(
        f"{source!r} is not a local file or directory, and downloading it failed "
        f"({_brief(exc)}); "
        "pass a local path to a checkpoint file or model directory instead"
    )


def _vit_from_torchvision_name(source: str) -> VisionTransformer:
    import torchvision

    try:
        if "_Weights." in source:  # "ViT_B_16_Weights.IMAGENET1K_V1" -> builder "vit_b_16"
            weights = torchvision.models.get_weight(source)
            name = source.split("_Weights.")[0].lower()
        else:
            name, weights = source, "DEFAULT"
        model = torchvision.models.get_model(name, weights=weights)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{source!r}: not a torchvision ViT weights name ({_brief(exc)})") from exc
    except Exception as exc:  # a failed download surfaces as URLError, OSError, RuntimeError...
        raise _download_failed(source, exc) from exc
    return vit_from_torchvision(model)


def _vit_from_timm_name(source: str) -> VisionTransformer:
    import timm

    name = source.removeprefix("timm/")
    if timm.is_model(name):
        name_or_hub = name
    elif "/" in source:
        name_or_hub = source if source.startswith("hf-hub:") else f"hf-hub:{source}"
    else:
        raise UserError(
            f"{source!r} is neither a local file or directory nor a torchvision or timm model name"
        )
    try:
        model = timm.create_model(name_or_hub, pretrained=True)
    except Exception as exc:  # hub errors come as many types
        raise _download_failed(source, exc) from exc
    return vit_from_timm(model)


def _is_torchvision_name(source: str) -> bool:
    import torchvision

    if "_Weights." in source:
        return source.startswith("ViT_")
    return source in torchvision.models.list_models(
        module=torchvision.models
    ) and source.startswith("vit_")


def _adapt(model: VisionTransformer, num_classes: int | None, image_size: int | None) -> None:
    config = model.config
    if image_size is not None and image_size != config.image_size:
        if image_size <= 0 or image_size % config.patch_size:
            raise UserError(
                f"image_size={image_size}: expected a positive multiple of the patch size {config.patch_size}"
            )
        grid = (image_size // config.patch_size,) * 2
        with torch.no_grad():
            pos = resample_pos_embed(model.pos_embed, grid, model.num_prefix_tokens, model.grid)
        model.pos_embed = nn.Parameter(pos)
        model.grid = grid
        config = replace(config, image_size=image_size)
    if num_classes is not None:
        if num_classes < 0:
            raise UserError(f"num_classes={num_classes}: expected 0 (no head) or more")
        if num_classes == 0:
            model.head = nn.Identity()
        else:
            if not isinstance(model.head, nn.Linear):  # a headless model gets one to reset
                model.head = nn.Linear(config.dim, 1)
            reset_head(model, num_classes)
        config = replace(config, num_classes=num_classes)
    model.config = config


def load_pretrained_vit(
    source: str,
    num_classes: int | None = None,
    image_size: int | None = None,
    *,
    num_heads: int | None = None,
) -> VisionTransformer:
    """A pretrained `VisionTransformer`, optionally adapted to new classes and image size.

    Args:
        source: A local ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict of a torchvision,
            timm or unitransformer ViT (sizes read off its tensors); a local timm model
            directory (``config.json`` + weights); a torchvision name (``vit_b_16``,
            ``ViT_B_16_Weights.IMAGENET1K_V1``); or a timm name (``vit_base_patch16_224``,
            ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``), downloaded when online.
        num_classes: A new zero-initialised head of this many classes (0: no head).
        image_size: Position embeddings resampled to this image size's patch grid.
        num_heads: Attention heads of a state-dict file (files do not record them); by
            default those of the standard ViT of that width.

    Returns:
        The model in eval mode, its ``config`` updated to the new classes and image size.

    Raises:
        UserError: Naming the file and the problem, or saying that a download failed.
        StateDictMismatchError: When a file's tensors do not fit the architecture they imply.
        UnsupportedModelError: When the model uses a feature ours cannot represent.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        model = _vit_from_directory(path)
    elif path.is_file():
        model = _vit_from_file(path, num_heads)
    elif path.suffix in _STATE_DICT_SUFFIXES:
        raise UserError(f"{source}: no such file")
    elif _is_torchvision_name(source):
        model = _vit_from_torchvision_name(source)
    else:
        model = _vit_from_timm_name(source)
    _adapt(model, num_classes, image_size)
    return model.eval()


def load_pretrained_marian(source: str) -> Seq2SeqTransformer:
    """A `Seq2SeqTransformer` from a Marian model directory or hub name.

    Args:
        source: A local Hugging Face model directory (``config.json`` + weights) or a hub
            name such as ``Helsinki-NLP/opus-mt-en-de``, downloaded when online.

    Raises:
        UserError: Naming the directory and the problem, or saying that a download failed.
        UnsupportedModelError: When the Marian config is one ours cannot represent.
    """
    from transformers import MarianMTModel

    path = Path(source).expanduser()
    if path.exists():
        config_file = path / "config.json"
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise UserError(
                f"{config_file}: expected a Hugging Face model config ({_brief(exc)})"
            ) from exc
        if model_type != "marian":
            raise UserError(f"{config_file}: model_type is {model_type!r}, expected 'marian'")
        try:
            model = MarianMTModel.from_pretrained(path)
        except Exception as exc:  # transformers raises many kinds; name the directory
            raise UserError(
                f"{path}: transformers could not load the model ({_brief(exc)})"
            ) from exc
    else:
        try:
            model = MarianMTModel.from_pretrained(source)
        except Exception as exc:  # offline: OSError, httpx/requests errors...
            raise _download_failed(source, exc) from exc
    return seq2seq_from_marian(model.eval())
