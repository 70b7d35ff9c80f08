"""BYOL parts: heads, loss, target EMA, schedules, parameter groups and LARS.

Bootstrap Your Own Latent, Grill et al. 2020, "Bootstrap your own latent: A new approach to
self-supervised learning", NeurIPS, https://arxiv.org/abs/2006.07733 (cited below as "BYOL").
Small composable parts in the manner of lightly; the training loop lives elsewhere.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """BYOL projector g: Linear -> BatchNorm -> ReLU -> Linear (BYOL Sec. 3.3, 2048->4096->256).

    As in BYOL (and lightly), the first Linear has no bias because BatchNorm follows it.
    """

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class PredictionHead(ProjectionHead):
    """BYOL predictor q: the projector's architecture on the projection (256->4096->256)."""

    def __init__(self, in_dim: int = 256, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__(in_dim, hidden_dim, out_dim)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss, 2 - 2 cos(p, z), averaged over the batch (BYOL Eq. 2).

    Equals the mean squared distance of the L2-normalised vectors; `z` (the target projection) is
    detached, the stop-gradient of BYOL.
    """
    cos = F.cosine_similarity(p, z.detach(), dim=-1)
    return (2 - 2 * cos).mean()


class BYOL(nn.Module):
    """Online network (encoder, projector, predictor) and its EMA target (encoder, projector).

    `encoder` maps images to `feature_dim` features (e.g. `build_model(num_classes=0)`). The target
    starts as a deep copy of the online encoder and projector and never receives gradients; it
    follows the online weights through `update_target` (BYOL Eq. 1).
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        hidden_dim: int = 4096,
        projection_dim: int = 256,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = ProjectionHead(feature_dim, hidden_dim, projection_dim)
        self.predictor = PredictionHead(projection_dim, hidden_dim, projection_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for param in self.target_parameters():
            param.requires_grad_(False)

    def target_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters of the target network (encoder then projector)."""
        yield from self.target_encoder.parameters()
        yield from self.target_projector.parameters()

    def online_parameters(self) -> Iterable[nn.Parameter]:
        """Online parameters that have target counterparts (the predictor has none)."""
        yield from self.encoder.parameters()
        yield from self.projector.parameters()

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """Symmetric BYOL loss of two views of the same images: L(v1 -> v2) + L(v2 -> v1).

        The sum, as in BYOL Eq. 2 and the total loss after it, so the value lies in [0, 8].
        Each view passes the networks on its own, so BatchNorm statistics are per view as in the
        reference implementation. The target runs in the module's mode (train mode during
        pretraining, where its BatchNorm layers normalise with batch statistics).
        """
        p1 = self.predictor(self.projector(self.encoder(view1)))
        p2 = self.predictor(self.projector(self.encoder(view2)))
        with torch.no_grad():
            z1 = self.target_projector(self.target_encoder(view1))
            z2 = self.target_projector(self.target_encoder(view2))
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """EMA step, target = tau * target + (1 - tau) * online, for parameters only (BYOL Eq. 1).

        Buffers (BatchNorm running statistics) are not averaged or copied: in BYOL the target's
        state is its own, updated by its own forward passes in train mode, as in the reference
        implementation and lightly's `update_momentum`. They only matter for evaluating the
        target in eval mode, which pretraining never does; the online encoder is what is kept.
        """
        for target, online in zip(self.target_parameters(), self.online_parameters(), strict=True):
            target.mul_(tau).add_(online, alpha=1 - tau)


def tau_schedule(step: int, total_steps: int, tau_base: float = 0.99) -> float:
    """EMA rate at optimizer step `step`: 1 - (1 - tau_base) (cos(pi step / K) + 1) / 2 (BYOL 3.2).

    `tau_base` at step 0, rising to 1.0 at step K = `total_steps`. BYOL uses 0.996 over hundreds
    of epochs; for short runs a smaller base (e.g. 0.99) keeps the EMA horizon, about
    1 / (1 - tau) steps, a small share of all steps.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return 1 - (1 - tau_base) * (math.cos(math.pi * step / total_steps) + 1) / 2


def lr_schedule(
    step: int, total_steps: int, base_lr: float, batch_size: int, warmup_steps: int
) -> float:
    """Learning rate at `step`: linear warm-up from 0 then cosine decay to 0 (BYOL Sec. 4 / C).

    The peak is base_lr * batch_size / 256, reached at `warmup_steps`; the rate is 0 at step 0 (as
    in BYOL's reference code, so the first step moves nothing) and at `total_steps` and beyond.
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
    peak = base_lr * batch_size / 256
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups: weight matrices/filters with decay; biases and norm parameters without.

    1-D parameters (biases, BatchNorm scales and shifts) get no weight decay and carry
    ``lars_exclude=True`` so `LARS` skips its trust ratio for them (BYOL Appendix C). Frozen
    parameters (e.g. the BYOL target) are left out.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017, arXiv:1708.03888).

    For each parameter tensor w with gradient g in a group not flagged ``lars_exclude``:
    d = g + wd * w, scaled by the trust ratio eta * ||w|| / (||g|| + wd * ||w|| + eps) (their
    Eq. 6; 1 when ||w|| or ||g|| is 0). Flagged groups (see `parameter_groups`) take plain
    SGD steps. Then v = momentum * v + d and w = w - lr * v, as in torch's SGD.

    Written here because torch has no LARS and the maintained ones come with large frameworks
    (lightly, timm); lightly's `LARS` is the test-time reference.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"lr, momentum, weight_decay must be >= 0: {lr}, {momentum}, {weight_decay}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            eps=eps,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Take one optimisation step; `closure` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            # whole-group tensor ops (torch._foreach_*, as torch's own SGD uses): one launch
            # per operation instead of a Python loop of small ones per parameter tensor
            grads = [param.grad for param in params]
            wd = group["weight_decay"]
            updates = (torch._foreach_add(grads, params, alpha=wd) if wd
                       else [grad.clone() for grad in grads])
            if not group["lars_exclude"]:
                p_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                ratio = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                ratio = torch.where((p_norm > 0) & (g_norm > 0), ratio, 1.0)
                torch._foreach_mul_(updates, list(ratio.unbind()))
            if group["momentum"]:
                for param in params:  # a new buffer starts at 0: its first value is the update
                    if "momentum_buffer" not in self.state[param]:
                        self.state[param]["momentum_buffer"] = torch.zeros_like(param)
                buffers = [self.state[param]["momentum_buffer"] for param in params]
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, updates)
                updates = buffers
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss
