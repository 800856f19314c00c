"""The workloads of the suite: ours and the peer's, built with the same shapes and weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.shapes import SEQ2SEQ, VIT
from unitransformer import (
    Attention,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    VisionTransformer,
    ViTConfig,
)


def ours_vit() -> nn.Module:
    """Our ViT of row 2."""
    c = VIT
    config = ViTConfig(
        image_size=c["image_size"], patch_size=c["patch_size"], num_classes=c["classes"],
        dim=c["dim"], depth=c["depth"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"],
    )  # fmt: skip
    return VisionTransformer(config)


def timm_vit() -> nn.Module:
    """timm's ViT with row 2's configuration."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    c = VIT
    return TimmViT(
        img_size=c["image_size"], patch_size=c["patch_size"], num_classes=c["classes"],
        embed_dim=c["dim"], depth=c["depth"], num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"],
    )  # fmt: skip


def ours_seq2seq() -> nn.Module:
    """Our translation model of row 3 (post-LN, relu, shared embeddings: Marian's layout)."""
    c = SEQ2SEQ
    config = Seq2SeqConfig(
        src_vocab_size=c["vocab"], tgt_vocab_size=c["vocab"], dim=c["dim"],
        encoder_depth=c["layers"], decoder_depth=c["layers"], num_heads=c["heads"],
        mlp_dim=c["ffn"], activation="relu", dropout=0.1, final_logits_bias=True,
    )  # fmt: skip
    return Seq2SeqTransformer(config)


def marian_seq2seq() -> nn.Module:
    """Hugging Face's MarianMTModel with row 3's configuration."""
    from transformers import MarianConfig, MarianMTModel

    c = SEQ2SEQ
    config = MarianConfig(
        vocab_size=c["vocab"], d_model=c["dim"], encoder_layers=c["layers"],
        decoder_layers=c["layers"], encoder_attention_heads=c["heads"],
        decoder_attention_heads=c["heads"], encoder_ffn_dim=c["ffn"], decoder_ffn_dim=c["ffn"],
        activation_function="relu", dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        max_position_embeddings=512, pad_token_id=0, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    return MarianMTModel(config)


def attention_step(dim: int, heads: int, batch: int, length: int) -> dict[str, Callable[[], None]]:
    """Forward+backward of one self-attention layer: ours, torch's and timm's."""
    from timm.models.vision_transformer import Attention as TimmAttention

    torch.manual_seed(0)
    x = torch.randn(batch, length, dim, requires_grad=True)
    ours = Attention(dim, heads)
    torch_mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    timm_attn = TimmAttention(dim, heads, qkv_bias=True)

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            fn().sum().backward()

        return step

    return {
        "ours": run(lambda: ours(x)),
        "torch.nn.MultiheadAttention": run(lambda: torch_mha(x, x, x, need_weights=False)[0]),
        "timm Attention": run(lambda: timm_attn(x)),
    }


def torch_adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The peers' default optimizer: ``torch.optim.AdamW`` with torch's default kernel choice."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def engine_adamw(model: nn.Module) -> torch.optim.Optimizer:
    """What ``unitransformer train`` builds: the engine's AdamW (fused where available)."""
    from unitransformer.engine.config import OptimConfig
    from unitransformer.engine.optim import build_optimizer, weight_decay_groups

    return build_optimizer(weight_decay_groups(model, 0.05), OptimConfig(lr=1e-4))


def default_bf16() -> bool:
    """Whether ``train.precision: auto`` (the default) picks bf16 on this machine's CPU."""
    from unitransformer.engine.runtime import resolve_precision

    return resolve_precision("auto", torch.device("cpu")) == "bf16"


def vit_train_step(
    model: nn.Module,
    batch: int,
    bf16: bool,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] = torch_adamw,
    compile: bool = False,
) -> Callable[[], None]:
    """One AdamW step of ``model`` (compiled if asked) on a fixed random image batch."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, VIT["image_size"], VIT["image_size"])
    labels = torch.randint(0, VIT["classes"], (batch,))
    optimizer = make_optimizer(model)
    model = torch.compile(model) if compile else model
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def torch_smoothed_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Label-smoothed cross-entropy as the peers compute it: ``F.cross_entropy`` in float32."""
    return F.cross_entropy(logits.float(), target, label_smoothing=0.1)


def engine_smoothed_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The translation task's loss: `label_smoothed_cross_entropy` with its own backward."""
    from unitransformer.losses import label_smoothed_cross_entropy

    loss, _, count = label_smoothed_cross_entropy(logits, target, 0.1, -100)
    return loss / count


def seq2seq_train_step(
    model: nn.Module,
    is_marian: bool,
    bf16: bool,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] = torch_adamw,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch_smoothed_loss,
) -> Callable[[], None]:
    """One AdamW step, label-smoothed cross-entropy, on a fixed random sentence batch."""
    c = SEQ2SEQ
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, c["vocab"], (c["batch"], c["length"]), generator=g)
    tgt = torch.randint(3, c["vocab"], (c["batch"], c["length"] + 1), generator=g)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    optimizer = make_optimizer(model)
    model.train()

    def logits() -> torch.Tensor:
        if is_marian:
            mask = torch.ones_like(src)
            return model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt_in).logits
        return model(src, tgt_in)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(logits().flatten(0, 1), tgt_out.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def vit_inference(model: nn.Module, batch: int, bf16: bool) -> Callable[[], None]:
    """Eval-mode forward of a fixed image batch, no grad."""
    images = torch.randn(batch, 3, VIT["image_size"], VIT["image_size"])
    model.eval()

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(images)

    return run


def vit_step_flops(model: nn.Module, batch: int) -> float:
    """Training FLOPs of one ViT step: 6 x matmul parameters x tokens, plus attention."""
    tokens = (VIT["image_size"] // VIT["patch_size"]) ** 2 + 1
    params = sum(p.numel() for n, p in model.named_parameters() if p.ndim >= 2)
    dense = 6 * params * tokens * batch
    # q k^T and attn v: 2 matmuls of 2 * T^2 * dim FLOPs each per layer, forward; x3 with backward.
    attention = 3 * 2 * 2 * batch * tokens**2 * VIT["dim"] * VIT["depth"]
    return float(dense + attention)
