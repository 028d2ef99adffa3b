"""Group-robust objective: weight update and weighted gradient against brute force, η = 0, DDP."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from pluralign.errors import ConfigError
from pluralign.objectives import (
    Column,
    CorrectedDPOObjective,
    DPOObjective,
    GroupRobustObjective,
    MixDPOObjective,
    dpo_loss,
)
from pluralign.strength import Gamma

BETA = 0.1


def _brute_force_step(margins, groups, weights, counts, eta, beta=BETA):
    """One minibatch step of GRPO written as explicit loops in float64 Python arithmetic.

    Returns the new weights and d(mean weighted loss)/d(margin_i) for every pair.
    """
    n_total, b, k = sum(counts), len(margins), len(weights)
    losses = [math.log1p(math.exp(-beta * m)) for m in margins]        # −log σ(βΔ)
    estimate = [0.0] * k
    for loss, g in zip(losses, groups, strict=True):
        estimate[g] += loss * n_total / counts[g] / b                 # (1/B) Σ N ℓ / N_g
    raised = [w * math.exp(eta * e) for w, e in zip(weights, estimate, strict=True)]
    new = [r / sum(raised) for r in raised]
    grads = []
    for m, g in zip(margins, groups, strict=True):
        dloss = -beta / (1.0 + math.exp(beta * m))                    # d/dΔ −log σ(βΔ)
        grads.append(new[g] * n_total / counts[g] * dloss / b)
    return new, grads


@st.composite
def _batches(draw):
    k = draw(st.integers(1, 4))
    b = draw(st.integers(1, 12))
    groups = draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b))
    margins = draw(st.lists(st.floats(-30, 30), min_size=b, max_size=b))
    counts = draw(st.lists(st.integers(1, 50), min_size=k, max_size=k))
    raw = draw(st.lists(st.floats(0.05, 1.0), min_size=k, max_size=k))
    eta = draw(st.floats(0.0, 3.0))
    return margins, groups, [r / sum(raw) for r in raw], counts, eta


@settings(max_examples=150, deadline=None)
@given(_batches())
def test_weight_update_and_weighted_gradient_match_brute_force(case):
    margins, groups, weights, counts, eta = case
    objective = GroupRobustObjective(DPOObjective(BETA), len(weights), eta, group_counts=counts)
    objective.group_weights.copy_(torch.tensor(weights, dtype=torch.float64))
    margin = torch.tensor(margins, dtype=torch.float64, requires_grad=True)
    objective(margin, {"group": torch.tensor(groups, dtype=torch.float32)}).mean().backward()
    new, grads = _brute_force_step(margins, groups, weights, counts, eta)
    assert objective.group_weights.tolist() == pytest.approx(new, rel=1e-12, abs=1e-15)
    assert margin.grad.tolist() == pytest.approx(grads, rel=1e-10, abs=1e-15)


def test_zero_step_size_is_dpo_with_importance_weights():
    counts = [30.0, 10.0, 5.0]
    margin = torch.linspace(-3, 4, 9, dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1, 2])
    objective = GroupRobustObjective(DPOObjective(BETA), 3, step_size=0.0, group_counts=counts)
    for _ in range(3):  # α never moves, however many steps
        loss = objective(margin, {"group": group})
    share = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    expected = dpo_loss(margin, BETA) * (1 / 3) / share[group]
    torch.testing.assert_close(loss, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(objective.group_weights,
                               torch.full((3,), 1 / 3, dtype=torch.float64))


def test_weights_rise_for_the_group_with_the_larger_loss_and_not_in_eval():
    objective = GroupRobustObjective(DPOObjective(BETA), 2, step_size=1.0, group_counts=[8, 2])
    margin = torch.tensor([5.0, 5.0, -5.0, 5.0], requires_grad=True)  # group 1 is wrong
    batch = {"group": torch.tensor([0, 0, 1, 0])}
    with torch.no_grad():
        objective(margin, batch)
    assert objective.group_weights.tolist() == [0.5, 0.5]
    objective(margin, batch)
    assert objective.group_weights[1] > 0.5
    metrics = objective.metrics()
    assert metrics["group_weight/1"] == pytest.approx(float(objective.group_weights[1]))
    assert metrics["beta_mean"] == BETA


def test_group_robust_mixdpo_uses_the_same_outer_weights_and_trains_the_strength():
    objective = GroupRobustObjective(MixDPOObjective(Gamma(2.0, 16.7)), 2, 0.5,
                                     group_counts=[3, 1], group_names=["maj", "min"])
    margin = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    objective(margin, {"group": torch.tensor([0, 1, 0])}).mean().backward()
    params = list(objective.parameters())
    assert params and all(p.grad is not None for p in params)
    assert set(objective.state_dict()) >= {"group_weights", "group_fractions"}
    assert "group_weight/min" in objective.metrics()


def test_state_dict_round_trip_restores_the_weights():
    a = GroupRobustObjective(DPOObjective(BETA), 2, 1.0, group_counts=[4, 1])
    a(torch.tensor([1.0, -3.0], requires_grad=True), {"group": torch.tensor([0, 1])})
    b = GroupRobustObjective(DPOObjective(BETA), 2, 1.0)
    b.load_state_dict(a.state_dict(), strict=True)
    torch.testing.assert_close(b.group_weights, a.group_weights)
    torch.testing.assert_close(b.group_fractions, a.group_fractions)


@pytest.mark.parametrize("batch, message", [
    (None, "needs batch"),
    ({"group": torch.tensor([0.5, 1.0])}, "integer group ids"),
    ({"group": torch.tensor([0, 2])}, "outside"),
])
def test_bad_group_columns_fail_clearly(batch, message):
    objective = GroupRobustObjective(DPOObjective(BETA), 2, 1.0, group_counts=[1, 1])
    with pytest.raises(ConfigError, match=message):
        objective(torch.zeros(2), batch)


def test_empty_groups_and_missing_counts_fail_clearly():
    with pytest.raises(ConfigError, match="no training pairs"):
        GroupRobustObjective(DPOObjective(BETA), 2, 1.0, group_counts=[3, 0])
    with pytest.raises(ConfigError, match="no group counts"):
        GroupRobustObjective(DPOObjective(BETA), 2, 1.0)(torch.zeros(1),
                                                         {"group": torch.tensor([0])})


# ------------------------------------------------------------------ two gloo processes
_MARGINS = [[0.3, -1.2, 2.0, -0.4], [1.5, -2.5, 0.1, 0.7]]   # step 1 / step 2, global batch of 4
_GROUPS = [[0, 1, 0, 1], [1, 1, 0, 0]]
_COUNTS = [6, 2]


def _ddp_worker(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        objective = GroupRobustObjective(DPOObjective(BETA), 2, 2.0, group_counts=_COUNTS)
        for margins, groups in zip(_MARGINS, _GROUPS, strict=True):
            half = slice(2 * rank, 2 * rank + 2)                      # each rank: 2 of 4 pairs
            margin = torch.tensor(margins[half], dtype=torch.float64, requires_grad=True)
            objective(margin, {"group": torch.tensor(groups[half])}).mean().backward()
        queue.put((rank, objective.group_weights.tolist()))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_hold_identical_weights_equal_to_the_full_batch():
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_ddp_worker, args=(_free_port(), queue), nprocs=2, join=True)
    results = dict(queue.get() for _ in range(2))
    single = GroupRobustObjective(DPOObjective(BETA), 2, 2.0, group_counts=_COUNTS)
    for margins, groups in zip(_MARGINS, _GROUPS, strict=True):
        single(torch.tensor(margins, dtype=torch.float64, requires_grad=True),
               {"group": torch.tensor(groups)})
    assert results[0] == results[1]
    assert results[0] == pytest.approx(single.group_weights.tolist(), rel=1e-12)
    assert results[0] != pytest.approx([0.5, 0.5])


def test_proportional_start_makes_the_first_weighted_loss_plain_dpo():
    objective = GroupRobustObjective(DPOObjective(BETA), 2, 0.0, group_counts=[3, 1],
                                     initial_weights="proportional")
    margin = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    loss = objective(margin, {"group": torch.tensor([0, 1, 0, 0])})
    torch.testing.assert_close(loss, dpo_loss(margin, BETA), rtol=1e-15, atol=0)
    torch.testing.assert_close(objective.group_weights,
                               torch.tensor([0.75, 0.25], dtype=torch.float64))


def test_the_wrapper_declares_its_base_objectives_columns_and_passes_their_ids_on():
    """A group-robust corrected DPO needs ``pair_variance`` as much as corrected DPO does; the
    trainer learns it from the wrapper's declaration."""
    objective = GroupRobustObjective(CorrectedDPOObjective(alpha=1.0), group_by="attr.age")
    assert objective.columns() == (Column("pair_variance"),
                                   Column("group", ids=True, ids_from="attr.age"))
    objective.set_ids("group", [3, 1], ["18-24", "65+"])
    assert objective.group_names == ["18-24", "65+"]
    assert objective.group_fractions.tolist() == [0.75, 0.25]
    heard = []
    objective.base.set_ids = lambda *args: heard.append(args)
    objective.set_ids("speaker", [2, 2], None)
    assert heard == [("speaker", [2, 2], None)] and objective.num_groups == 2


def test_group_by_must_be_text_and_name_two_or_more_groups():
    from pluralign.objectives.registry import build_objective

    with pytest.raises(ConfigError, match=r"group_by=5 is invalid; it must be text"):
        build_objective("group_dpo", group_by=5)
    objective = build_objective("group_dpo", group_by="attr.gender")
    with pytest.raises(ConfigError, match=r"group_by='attr.gender' has one group \(female\)"):
        objective.set_ids("group", [7], ["female"])
