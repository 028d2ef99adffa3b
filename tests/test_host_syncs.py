"""No host synchronisation in an objective's forward/backward inside numerics.sync_free (issue 13
item 5): every way a tensor's value reaches Python (item, float, int, bool, tolist) is made to
raise while the loss runs."""

import contextlib

import pytest
import torch

from pluralign.numerics import DEBUG_ENV, NumericsError, sync_free
from pluralign.objectives import build_objective

OBJECTIVES = [
    ("dpo", {}),
    ("mixdpo", {"strength": "point"}),
    ("mixdpo", {"strength": "lognormal"}),
    ("mixdpo", {"strength": "lognormal", "method": "monte_carlo"}),
    ("mixdpo", {"strength": "gamma"}),
    ("mixdpo", {"strength": "gamma", "learnable_strength": False}),
    ("corrected_dpo", {}),
    ("agreement", {"num_types": 3}),
]
BATCH = {"pair_variance": torch.tensor([0.01, 0.05, 0.0]),
         "agreement": torch.tensor([1.0, 0.0, 1.0])}


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads():
    """Within: every read of a tensor's value into Python raises HostSync."""

    def forbidden(*args, **kwargs):
        raise HostSync("a tensor value was read on the host")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
            patch.setattr(torch.Tensor, name, forbidden)
        yield


def _loss_and_grads(objective, margin):
    loss = objective(margin, BATCH).mean()
    params = [p for p in objective.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [margin, *params])
    return loss.detach(), grads


@pytest.mark.parametrize(("name", "kwargs"), OBJECTIVES)
def test_loss_forward_backward_reads_nothing_on_the_host(name, kwargs):
    objective = build_objective(name, **kwargs)
    margin = torch.tensor([0.3, -1.2, 0.0], requires_grad=True)
    torch.manual_seed(0)
    expected = _loss_and_grads(objective, margin)
    torch.manual_seed(0)
    with no_host_reads(), sync_free():
        got = _loss_and_grads(objective, margin)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_checks_read_the_host_outside_sync_free():
    """no_host_reads does catch the kernels' checks (so the test above can fail)."""
    objective = build_objective("mixdpo", strength="gamma")
    with no_host_reads(), pytest.raises(HostSync):
        objective(torch.tensor([0.3, -1.2]))


def test_inside_sync_free_a_nan_margin_gives_a_nan_loss_not_an_error():
    objective = build_objective("mixdpo", strength="gamma")
    with sync_free():
        loss = objective(torch.tensor([0.3, float("nan")]))
    assert torch.isnan(loss[1]) and torch.isfinite(loss[0])


def test_the_debug_flag_keeps_the_checks_inside_sync_free(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    objective = build_objective("mixdpo", strength="gamma")
    with sync_free(), pytest.raises(NumericsError, match="margin must be finite, got nan"):
        objective(torch.tensor([0.3, float("nan")]))
