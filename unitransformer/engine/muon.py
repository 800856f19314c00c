"""Muon: orthogonalized momentum for the hidden weight matrices, AdamW for everything else.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") replaces
each hidden matrix's momentum by the nearest semi-orthogonal matrix, computed with a few
Newton-Schulz iterations, so that every direction of the update moves at the same rate. The
update is rescaled so that its root-mean-square matches AdamW's (Liu et al. 2025, "Muon is
scalable for LLM training": ``0.2 * sqrt(max(rows, cols))``), which lets Muon reuse AdamW's
learning rate, weight decay and schedule. The input-facing and output layers, embeddings,
norms and biases stay on AdamW, as the method prescribes; `muon_groups` makes that split.

Convolution kernels ``[out, in, kh, kw]`` are orthogonalized as ``[out, in * kh * kw]``
matrices (as in Jordan's fast CIFAR-10 ConvNets).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Muon", "muon_groups", "orthogonalize"]

# The quintic iteration's coefficients (Jordan et al.): they push every singular value of a
# matrix of spectral norm <= 1 into about [0.7, 1.2] in five steps, which is as good as exact
# orthogonalization for training and far cheaper than an SVD.
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(
    matrix: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Approximates ``U @ V.T`` of ``matrix = U S V.T`` by a Newton-Schulz iteration.

    Args:
        matrix: A 2-d tensor ``[rows, cols]``, or a stack ``[n, rows, cols]`` of matrices
            orthogonalized each on its own (one batched matmul: faster than a loop).
        steps: Iterations; five suffice for the update of an optimizer.
        eps: Keeps the first normalization finite for a zero matrix.
        dtype: The iteration's dtype. ``torch.bfloat16`` is Jordan's choice on GPUs: the
            iteration only has to land the singular values in a band, which bf16's 8 bits of
            mantissa do, at the speed of AMX or tensor cores (on a CPU without AVX-512 BF16 or
            AMX bf16 matmuls are emulated and slower than float32).

    Returns:
        A tensor of ``matrix``'s shape and dtype whose matrices have singular values near 1.
    """
    a, b, c = _NS_COEFFICIENTS
    x = matrix.float()
    wide = x.size(-2) <= x.size(-1)
    if not wide:  # Iterate on the smaller Gram matrix: rows <= cols.
        x = x.mT
    # The Frobenius norm bounds the spectral norm: every singular value starts <= 1. It is
    # taken in float32, where the sum of squares of a large matrix cannot lose its small terms.
    x = (x / (x.norm(dim=(-2, -1), keepdim=True) + eps)).to(dtype)
    for _ in range(steps):
        gram = x @ x.mT  # [..., rows, rows]
        poly = torch.add(gram, gram @ gram, alpha=c / b).mul_(b)  # b * gram + c * gram^2
        x = torch.add(poly @ x, x, alpha=a)  # a * x + poly @ x
    return (x if wide else x.mT).to(matrix.dtype)


def muon_groups(
    param_groups: list[dict[str, Any]], model: nn.Module, exclude: Iterable[str]
) -> list[dict[str, Any]]:
    """Splits a task's parameter groups into Muon groups and AdamW groups.

    A parameter goes to Muon when it has at least two dimensions, its group is not marked
    ``"muon": False`` (`weight_decay_groups` marks its undecayed group so: embeddings,
    positions and class tokens are not hidden layers), and its name contains none of
    ``exclude`` (the output layer, say). Every group keeps its other settings.

    Args:
        param_groups: The task's groups (``{"params": [...], "weight_decay": ...}``).
        model: The model the parameters belong to, for their names.
        exclude: Substrings of parameter names that stay on AdamW.

    Returns:
        Groups with ``"muon": True`` or ``False``; empty groups are dropped.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    exclude = tuple(exclude)
    groups: list[dict[str, Any]] = []
    for group in param_groups:
        eligible = group.get("muon", True)
        matrices, rest = [], []
        for p in group["params"]:
            name = names.get(id(p), "")
            hidden = eligible and p.ndim >= 2 and not any(part in name for part in exclude)
            (matrices if hidden else rest).append(p)
        for params, flag in ((matrices, True), (rest, False)):
            if params:
                groups.append({**group, "params": params, "muon": flag})
    return groups


class Muon(torch.optim.Optimizer):
    """Muon on the groups marked ``"muon": True``, AdamW on the others.

    Args:
        param_groups: Groups from `muon_groups`.
        lr: Peak learning rate, shared by both rules (Muon's update has AdamW's RMS).
        betas: AdamW's moments.
        eps: AdamW's epsilon.
        weight_decay: Decoupled weight decay, unless a group sets its own.
        momentum: Muon's momentum (Nesterov).
        ns_steps: Newton-Schulz iterations.
        ns_dtype: Their dtype (`orthogonalize`); a setting of the machine, not of the run, so
            it is not saved with the state and a run may resume on another machine.
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.05,
        momentum: float = 0.95,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.float32,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "ns_steps": ns_steps,
            "muon": False,
        }
        super().__init__(param_groups, defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            if group["muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adamw(p, group)
        return loss

    def _muon(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """Nesterov momentum, orthogonalized: one batched iteration per matrix shape."""
        by_shape: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = {}
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])
            nesterov = p.grad.lerp(buf, group["momentum"])
            matrix = nesterov.reshape(p.size(0), -1)  # conv kernels: [out, in * kh * kw]
            by_shape.setdefault(tuple(matrix.shape), []).append((p, matrix))
        for (rows, cols), pairs in by_shape.items():
            stack = torch.stack([m for _, m in pairs])  # [n, rows, cols]
            updates = orthogonalize(stack, group["ns_steps"], dtype=self.ns_dtype)
            scale = 0.2 * math.sqrt(max(rows, cols))  # AdamW's update RMS (Liu et al.)
            for (p, _), update in zip(pairs, updates, strict=True):
                p.add_(update.view_as(p), alpha=-group["lr"] * scale)

    def _adamw(self, p: Tensor, group: dict[str, Any]) -> None:
        """Adam's bias-corrected moments (decoupled decay is applied in `step`)."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))
