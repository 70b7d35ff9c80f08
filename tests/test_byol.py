"""BYOL parts against lightly's reference implementation; the EMA and stop-gradient; schedules."""

from __future__ import annotations

import copy

import pytest
import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.utils.lars import LARS as LightlyLARS
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from rapid_utils.byol import (
    BYOL,
    LARS,
    PredictionHead,
    ProjectionHead,
    byol_loss,
    lr_schedule,
    parameter_groups,
    tau_schedule,
)


def tiny_byol() -> BYOL:
    """BYOL on a small MLP encoder with BatchNorm, for exact comparisons."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU())
    return BYOL(encoder, feature_dim=16, hidden_dim=32, projection_dim=8)


def test_default_head_shapes() -> None:
    projector, predictor = ProjectionHead(), PredictionHead()
    assert [projector[0].in_features, projector[0].out_features, projector[3].out_features] == [
        2048,
        4096,
        256,
    ]
    assert [predictor[0].in_features, predictor[0].out_features, predictor[3].out_features] == [
        256,
        4096,
        256,
    ]


@pytest.mark.parametrize(
    ("ours", "reference"),
    [(ProjectionHead, BYOLProjectionHead), (PredictionHead, BYOLPredictionHead)],
)
def test_heads_match_lightly(ours: type, reference: type) -> None:
    head, ref = ours(24, 48, 12), reference(24, 48, 12)
    ref_layers = list(ref.layers)
    assert [type(m) for m in head] == [type(m) for m in ref_layers]
    assert [m.bias is not None for m in head if isinstance(m, nn.Linear)] == [
        m.bias is not None for m in ref_layers if isinstance(m, nn.Linear)
    ]
    ref.layers.load_state_dict(head.state_dict())
    x = torch.randn(6, 24)
    torch.testing.assert_close(head(x), ref(x))  # train mode: batch statistics


def test_loss_relates_exactly_to_lightly() -> None:
    torch.manual_seed(1)
    p0, p1, z0, z1 = torch.randn(4, 10, 8).unbind(0)
    ours = byol_loss(p0, z1) + byol_loss(p1, z0)
    criterion = NegativeCosineSimilarity()
    lightly = 0.5 * (criterion(p0, z1) + criterion(p1, z0))  # lightly's BYOL example
    torch.testing.assert_close(ours, 4 + 4 * lightly)
    torch.testing.assert_close(byol_loss(p0, p0 * 3), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_loss_stops_the_target_gradient() -> None:
    p, z = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_forward_is_the_symmetric_loss() -> None:
    model = tiny_byol()
    v1, v2 = torch.randn(2, 6, 4, 8, 8).unbind(0)
    reference = copy.deepcopy(model)
    p1 = reference.predictor(reference.projector(reference.encoder(v1)))
    p2 = reference.predictor(reference.projector(reference.encoder(v2)))
    z1 = reference.target_projector(reference.target_encoder(v1))
    z2 = reference.target_projector(reference.target_encoder(v2))
    criterion = NegativeCosineSimilarity()
    expected = 4 + 4 * 0.5 * (criterion(p1, z2.detach()) + criterion(p2, z1.detach()))
    torch.testing.assert_close(model(v1, v2), expected)


def test_target_is_a_frozen_copy() -> None:
    model = tiny_byol()
    assert all(not p.requires_grad for p in model.target_parameters())
    for target, online in zip(model.target_parameters(), model.online_parameters(), strict=True):
        assert target is not online
        torch.testing.assert_close(target, online)


def _perturbed_byol() -> BYOL:
    """`tiny_byol` with online and target weights moved apart, so an EMA step shows."""
    model = tiny_byol()
    with torch.no_grad():
        for param in model.online_parameters():
            param.add_(torch.randn_like(param))
        for param in model.target_parameters():
            param.add_(torch.randn_like(param))
        model.encoder[2].running_mean.fill_(5.0)
    return model


@pytest.mark.parametrize("tau", [0.0, 0.9, 1.0])
def test_ema_step_is_byol_eq1(tau: float) -> None:
    model = _perturbed_byol()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.update_target(tau)
    for name, param in model.named_parameters():
        if name.startswith("target_"):  # pair by name, not by the model's own iterators
            old, online = before[name], before[name.removeprefix("target_")]
            torch.testing.assert_close(param, tau * old + (1 - tau) * online, rtol=1e-6, atol=1e-6)
            if tau in (0.0, 1.0):  # the ends are exact: a copy of the online weights, no change
                assert torch.equal(param, online if tau == 0.0 else old), name
        else:
            assert torch.equal(param, before[name]), name  # online and predictor are only read
    # buffers stay the target's own
    torch.testing.assert_close(model.target_encoder[2].running_mean, torch.zeros(16))


def test_tau_schedule_matches_lightly_cosine_schedule() -> None:
    total = 20
    for step in [0, 1, 7, 10, 19, 20]:
        # lightly divides by max_steps - 1 and holds end_value from step max_steps - 1
        reference = cosine_schedule(step, total + 1, start_value=0.99, end_value=1.0)
        assert tau_schedule(step, total, tau_base=0.99) == pytest.approx(reference, abs=1e-12)
    assert tau_schedule(0, total) == pytest.approx(0.99)
    assert tau_schedule(total, total) == pytest.approx(1.0)


def test_lr_schedule_ends() -> None:
    kwargs = dict(total_steps=100, base_lr=0.2, batch_size=512, warmup_steps=10)
    peak = 0.2 * 512 / 256
    assert lr_schedule(0, **kwargs) == 0.0
    assert lr_schedule(5, **kwargs) == pytest.approx(peak / 2)
    assert lr_schedule(10, **kwargs) == pytest.approx(peak)
    assert lr_schedule(55, **kwargs) == pytest.approx(peak / 2)
    assert lr_schedule(100, **kwargs) == pytest.approx(0.0, abs=1e-15)
    assert lr_schedule(120, **kwargs) == pytest.approx(0.0, abs=1e-15)
    assert lr_schedule(0, 100, 0.2, 256, warmup_steps=0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        lr_schedule(0, 10, 0.2, 256, warmup_steps=10)


def test_parameter_groups_exclude_biases_and_norms() -> None:
    model = tiny_byol()
    decay, no_decay = parameter_groups(model, weight_decay=1e-6)
    assert decay["weight_decay"] == 1e-6 and not decay["lars_exclude"]
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"]
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    frozen = {id(p) for p in model.target_parameters()}
    assert not frozen & {id(p) for p in decay["params"] + no_decay["params"]}
    # BatchNorm weights and all biases land in the no-decay group
    assert any(p is model.encoder[2].weight for p in no_decay["params"])
    assert any(p is model.encoder[1].bias for p in no_decay["params"])


def test_lars_matches_lightly() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    ref_net, start = copy.deepcopy(net), copy.deepcopy(net)
    ours = LARS(parameter_groups(net, 1e-3), lr=0.5, momentum=0.9)
    # lightly skips the trust ratio where weight_decay is 0, which is our excluded group
    reference = LightlyLARS(parameter_groups(ref_net, 1e-3), lr=0.5, momentum=0.9)
    x = torch.randn(8, 6)
    for _ in range(4):
        for model, optimizer in [(net, ours), (ref_net, reference)]:
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    for mine, theirs in zip(net.parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)
    assert not torch.equal(net[0].weight, start[0].weight)  # it did move


def test_lars_excluded_group_is_sgd() -> None:
    torch.manual_seed(3)
    param = nn.Parameter(torch.randn(5))
    twin = nn.Parameter(param.detach().clone())
    ours = LARS([{"params": [param], "weight_decay": 0.0, "lars_exclude": True}], lr=0.1)
    sgd = torch.optim.SGD([twin], lr=0.1, momentum=0.9)
    for _ in range(3):
        for p, optimizer in [(param, ours), (twin, sgd)]:
            optimizer.zero_grad()
            (p**3).sum().backward()
            optimizer.step()
    torch.testing.assert_close(param, twin)


def test_gradients_reach_the_online_network_only() -> None:
    model = tiny_byol()
    # Unfrozen here, so that only the forward's no_grad and the loss's detach can keep the
    # loss's gradient out of the target branch.
    for param in model.target_parameters():
        param.requires_grad_(True)
    graph = []
    for branch in (model.target_encoder, model.target_projector):
        branch.register_forward_hook(lambda module, args, out: graph.append(out.requires_grad))
    v1, v2 = torch.randn(2, 6, 4, 8, 8).unbind(0)
    model(v1, v2).backward()
    assert graph == [False] * 4  # both views through both target parts, recording no graph
    for name, param in model.named_parameters():
        if name.startswith("target_"):
            assert param.grad is None, name
        else:  # biases just before a BatchNorm get zero gradients, but get them
            assert param.grad is not None, name
    for part in (model.encoder, model.projector, model.predictor):
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0


def test_lars_momentum_of_a_parameter_that_joins_later_is_sgds() -> None:
    """One parameter has no gradient at the first step: its momentum starts at its own first
    step, and the other's momentum is kept, as in torch's SGD."""
    torch.manual_seed(4)
    first, late = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))
    twins = [nn.Parameter(p.detach().clone()) for p in (first, late)]
    ours = LARS([{"params": [first, late], "weight_decay": 0.0, "lars_exclude": True}], lr=0.1)
    sgd = torch.optim.SGD(twins, lr=0.1, momentum=0.9)
    for step in range(3):
        for (a, b), optimizer in [((first, late), ours), (twins, sgd)]:
            optimizer.zero_grad()
            loss = (a**2).sum() + ((b**3).sum() if step else 0)
            loss.backward()
            optimizer.step()
    torch.testing.assert_close(first, twins[0])
    torch.testing.assert_close(late, twins[1])
