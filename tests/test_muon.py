"""Muon: the Newton-Schulz orthogonalization, the split of parameters, the update rule against
plain math and torch's AdamW, exact resume, and the config surface."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from engine_toy import ToyConfig, ToyTask
from torch import nn

from unitransformer.engine import Trainer, load_config
from unitransformer.engine.checkpoint import checkpoint_dirs, load_state, load_tensors
from unitransformer.engine.config import ConfigError, OptimConfig
from unitransformer.engine.muon import Muon, muon_groups, orthogonalize
from unitransformer.engine.optim import build_optimizer, weight_decay_groups
from unitransformer.errors import UserError
from unitransformer.models.vit import VisionTransformer, ViTConfig


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32), (8, 27)])
def test_orthogonalize_brings_every_singular_value_near_one(shape, dtype):
    torch.manual_seed(0)
    k = min(shape)  # singular values from 0.1 to 10: a condition number of 100
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    matrix = u @ torch.diag(torch.logspace(-1, 1, k)) @ v.T
    result = orthogonalize(matrix, dtype=dtype)
    assert result.shape == matrix.shape and result.dtype == torch.float32  # the input's dtype
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.6 and singular.max() < 1.25, singular
    # The same singular vectors: the exact polar factor U V^T is close in direction.
    cosine = (result * (u @ v.T)).sum() / (result.norm() * (u @ v.T).norm())
    assert cosine > 0.95


def test_a_stack_is_orthogonalized_matrix_by_matrix():
    torch.manual_seed(0)
    stack = torch.randn(3, 10, 24) * torch.tensor([0.01, 1.0, 100.0]).view(3, 1, 1)
    together = orthogonalize(stack)
    for matrix, result in zip(stack, together, strict=True):
        torch.testing.assert_close(result, orthogonalize(matrix), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(orthogonalize(stack.mT), together.mT, rtol=1e-4, atol=1e-5)


def test_orthogonalize_keeps_a_zero_matrix_finite():
    assert torch.equal(orthogonalize(torch.zeros(4, 6)), torch.zeros(4, 6))


def _vit() -> VisionTransformer:
    return VisionTransformer(
        ViTConfig(
            image_size=16,
            patch_size=4,
            dim=32,
            depth=2,
            num_heads=2,
            num_classes=5,
            stem="conv",
            stem_width=8,
            stem_blocks=1,
        )
    )


def test_muon_groups_take_hidden_matrices_and_kernels_and_leave_the_rest_to_adamw():
    model = _vit()
    groups = muon_groups(
        weight_decay_groups(model, 0.05, no_decay=("pos_embed", "cls_token")), model, ("head",)
    )
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in groups if g["muon"] for p in g["params"]}
    adamw = {names[id(p)] for g in groups if not g["muon"] for p in g["params"]}
    assert muon.isdisjoint(adamw) and muon | adamw == set(names.values())
    assert "encoder.blocks.0.attn.qkv.weight" in muon and "encoder.blocks.1.mlp.fc2.weight" in muon
    assert any(n.startswith("patch_embed.convs") and n.endswith("weight") for n in muon)
    assert {"head.weight", "head.bias", "pos_embed"} <= adamw
    assert all(model.get_parameter(n).ndim >= 2 for n in muon)
    # Weight decay is kept per group: the undecayed group's matrices never reach Muon.
    assert all(g["weight_decay"] == 0.05 for g in groups if g["muon"])


def test_a_muon_step_is_the_orthogonalized_nesterov_momentum_at_adamws_rms():
    torch.manual_seed(0)
    layer = nn.Linear(12, 20, bias=False)
    start = layer.weight.detach().clone()
    grad = torch.randn(20, 12)
    lr, wd, momentum = 0.01, 0.1, 0.9
    optimizer = Muon(
        [{"params": [layer.weight], "muon": True}], lr=lr, weight_decay=wd, momentum=momentum
    )
    layer.weight.grad = grad.clone()
    optimizer.step()
    # Nesterov after one step: g + momentum * (buf - g) with buf = (1 - momentum) g.
    nesterov = grad * (1 - momentum**2)
    expected = start * (1 - lr * wd) - lr * 0.2 * math.sqrt(20) * orthogonalize(nesterov)
    torch.testing.assert_close(layer.weight.detach(), expected)
    # The update's RMS is 0.2 * lr whatever the gradient's scale, as AdamW's roughly is.
    rms = (layer.weight.detach() - start * (1 - lr * wd)).pow(2).mean().sqrt()
    assert rms == pytest.approx(0.2 * lr, rel=0.2)


def test_the_adamw_groups_follow_torchs_adamw():
    torch.manual_seed(0)
    ours, theirs = nn.Linear(6, 4), nn.Linear(6, 4)
    theirs.load_state_dict(ours.state_dict())
    kwargs = {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}
    a = Muon([{"params": list(ours.parameters()), "muon": False}], **kwargs)
    b = torch.optim.AdamW(theirs.parameters(), **kwargs)
    for _ in range(5):
        x = torch.randn(3, 6)
        for model, optimizer in ((ours, a), (theirs, b)):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize(
    ("muon_precision", "precision", "expected"),
    [
        ("auto", "bf16", torch.bfloat16),
        ("auto", "fp32", torch.float32),
        ("auto", "fp16", torch.float32),
        ("fp32", "bf16", torch.float32),
        ("bf16", "fp32", torch.bfloat16),
    ],
)
def test_newton_schulz_runs_in_bf16_under_bf16_autocast_or_when_asked(
    muon_precision, precision, expected
):
    model = _vit()
    config = OptimConfig(name="muon", muon_precision=muon_precision)
    optimizer = build_optimizer(weight_decay_groups(model, 0.05), config, model, precision)
    assert optimizer.ns_dtype == expected


def test_a_bf16_iteration_gives_nearly_the_fp32_update_and_is_not_saved():
    torch.manual_seed(0)
    models = [nn.Linear(64, 32, bias=False) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = models[0].weight.detach().clone()
    optimizers = [
        Muon([{"params": list(m.parameters()), "muon": True}], lr=0.01, ns_dtype=dtype)
        for m, dtype in zip(models, (torch.float32, torch.bfloat16), strict=True)
    ]
    x = torch.randn(16, 64)
    for model, optimizer in zip(models, optimizers, strict=True):
        model(x).pow(2).sum().backward()
        optimizer.step()
    full, half = (m.weight.detach() - start for m in models)
    assert not torch.equal(full, half)  # the bf16 path ran
    # The quintic iteration leaves each singular value somewhere in [0.7, 1.2], not at 1, and
    # bf16's rounding moves it within that band: close in direction, not equal (0.98 here).
    assert torch.cosine_similarity(full.flatten(), half.flatten(), dim=0) > 0.95
    # A machine setting, not the run's: a checkpoint written on a bf16 machine resumes in fp32.
    optimizers[0].load_state_dict(optimizers[1].state_dict())
    assert optimizers[0].ns_dtype == torch.float32


def test_build_optimizer_makes_muon_from_the_config_and_needs_the_model():
    model = _vit()
    groups = weight_decay_groups(model, 0.05, no_decay=("pos_embed",))
    config = OptimConfig(name="muon", lr=3e-3, muon_momentum=0.9)
    optimizer = build_optimizer(groups, config, model)
    assert isinstance(optimizer, Muon)
    assert {g["momentum"] for g in optimizer.param_groups} == {0.9}
    with pytest.raises(ValueError, match="needs the model"):
        build_optimizer(groups, config)
    adamw = build_optimizer(groups, OptimConfig(name="adamw"))
    assert all("muon" not in g for g in adamw.param_groups)  # no marker in Adam's state


BASE = [
    "data.num_examples=32",
    "train.deterministic=true",
    "train.precision=fp32",
    "train.checkpoint_every=1",
    "train.keep_last=100",
    "eval.every=0",
    "train.tensorboard=false",
    "optim.name=muon",
    "train.max_steps=6",
]


def _train(run_dir: Path) -> dict:
    config = load_config(ToyConfig, None, BASE)
    return Trainer(ToyTask(config), config, run_dir).fit()


def test_a_muon_run_learns_and_resumes_exactly_from_a_middle_checkpoint(tmp_path):
    straight = tmp_path / "straight"
    _train(straight)
    assert load_state(checkpoint_dirs(straight)[-1])["loop"]["step"] == 6
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for directory in checkpoint_dirs(resumed):
        if load_state(directory)["loop"]["step"] > 3:
            shutil.rmtree(directory)
    state = load_state(checkpoint_dirs(resumed)[-1])
    assert state["loop"]["step"] == 3 and state["optimizer"]["state"]  # momentum saved
    _train(resumed)
    a, b = load_tensors(checkpoint_dirs(straight)[-1]), load_tensors(checkpoint_dirs(resumed)[-1])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    first = load_tensors(checkpoint_dirs(straight)[0])
    assert any(not torch.equal(first[k], a[k]) for k in a)  # the weights moved


def test_muon_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="optim.muon_momentum"):
        load_config(ToyConfig, None, ["optim.muon_momentum=1.0"])
    with pytest.raises(ConfigError, match="optim.name"):
        load_config(ToyConfig, None, ["optim.name=muonn"])
    with pytest.raises(ConfigError, match="optim.muon_precision"):
        load_config(ToyConfig, None, ["optim.muon_precision=fp16"])


def test_muon_refuses_fsdp_shards_with_one_clear_error(tmp_path):
    config = load_config(ToyConfig, None, [*BASE, "train.fsdp=true", "train.ema_decay=0"])
    with pytest.raises(UserError, match="optim.name=muon"):
        Trainer(ToyTask(config), config, tmp_path).fit()
