"""Corrected DPO's safeguard must not move the corrected optimum (issue 12, defect 5).

The population version of the proximity environment ([DAHP, §7.2]): every cell (x, a, b) weighted
by the population preference P(a ≻ b | x) = E_u σ(r_u(a) − r_u(b)), with the exact type variance
V = Var_u σ(r_u(a) − r_u(b)). The corrected objective's optimum is a stationary point of the *raw*
loss −log(s + α·c), with no safeguard; the safeguarded loss must reach it for every α.
All states are rotations of each other, so one state carries the whole population optimum.
"""

import numpy as np
import pytest
import torch

from pluralign.envs import ProximityConfig, ProximityEnv
from pluralign.envs.policies import TabularPolicy
from pluralign.experiments.dahp import Cells, all_margins, fit_policy
from pluralign.objectives import CorrectedDPOObjective

pytestmark = pytest.mark.usefixtures("one_thread")


def _population(env):
    x, a, b = np.indices((env.config.num_states, env.config.num_actions,
                          env.config.num_actions))
    probs = np.tensordot(env.type_probs, env._type_probs_first(x, a, b), axes=1)
    weight = np.where(a != b, probs, 0.0)
    cells = Cells(weight=torch.as_tensor(weight))
    cells.extras["pair_variance"] = torch.as_tensor(env.preference_variance(x, a, b))
    return cells


def _raw_loss(log_probs, cells, alpha, beta):
    """The corrected loss of [DAHP, Eqs. 17–19] without any safeguard (NaN where q ≤ 0)."""
    s = torch.sigmoid(beta * all_margins(log_probs))
    v = cells.extras["pair_variance"]
    q = s + alpha * 0.5 * (1 - 2 * s) * v / (s * (1 - s))
    return (cells.weight * -torch.log(q)).sum() / cells.weight.sum(), q


@pytest.mark.parametrize("alpha", [1.0, 2.0, 5.0, 10.0])
def test_safeguard_leaves_the_corrected_optimum_in_place(alpha):
    env = ProximityEnv(ProximityConfig(num_states=1))
    cells = _population(env)
    policy = TabularPolicy(1, env.config.num_actions)
    fit_policy(policy, CorrectedDPOObjective(alpha=alpha, beta=env.config.beta), cells,
               steps=500)
    logits = policy.logits.detach().clone().requires_grad_(True)
    loss, q = _raw_loss(torch.log_softmax(logits, -1), cells, alpha, env.config.beta)
    inside = q[cells.weight > 0]
    assert bool((inside > 0).all() and (inside < 1).all()), "raw likelihood leaves (0, 1)"
    (grad,) = torch.autograd.grad(loss, logits)
    # at the uniform start the raw gradient is ~1e-2; a stationary point of the raw loss is
    # what the optimiser's tolerance leaves
    assert float(grad.abs().max()) < 1e-6
