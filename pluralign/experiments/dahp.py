"""The §7.2 experiment: DPO, first-order-corrected DPO, the agreement loss and the indirect route.

Every method turns its dataset into *cells*: the distinct (state, chosen, rejected) triples with
their multiplicities (plus per-cell side information such as ``pair_variance``). A mean of
per-pair losses over the dataset equals the weighted mean over cells, so training on cells is the
same objective as training on the samples while costing ``O(S·A²)`` per step instead of
``O(samples)``. Policies are fitted full-batch, by default with L-BFGS (the paper used Adam,
available as ``optimizer="adam"``; both reach the same optimum of these smooth objectives).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from scipy.stats import spearmanr
from torch import Tensor, nn

from pluralign.envs.plots import plot_policies
from pluralign.envs.policies import build_policy
from pluralign.envs.proximity import (
    FullInformation,
    PairedPairs,
    Pairs,
    ProximityConfig,
    ProximityEnv,
)
from pluralign.errors import ConfigError
from pluralign.objectives import Objective, build_objective, dpo_loss
from pluralign.reward.joint_likelihood import repeat_label_variance
from pluralign.runs import RunFolderOptions, write_config, write_report, write_table
from pluralign.validation import (
    COUNT,
    INDEX,
    NON_NEGATIVE,
    POSITIVE,
    check_fields,
    check_names,
    check_numbers,
)

METHODS = ("dpo", "corrected", "agreement", "indirect")


@dataclass
class ExperimentConfig:
    """How to run the §7.2 comparison.

    Attributes:
        seed: seeds data generation and MLP initialisation.
        policy: ``"tabular"`` or ``"mlp"``.
        hidden: MLP hidden width.
        num_pairs: single-label preferences for DPO and the indirect route.
        num_paired: annotators for corrected DPO, each labelling one item twice (the tabular
            joint-likelihood design; both labels also train the policy). The tabular variance
            has ~60 annotators per unordered pair at the default; with far fewer, its noise
            (clamped at 0) biases the correction upwards.
        num_full: items labelled by every type, for the agreement loss.
        alphas: correction strengths for corrected DPO.
        variance: ``"tabular"`` (Lemma 5.3's estimator from the repeated labels, see
            :func:`pluralign.reward.joint_likelihood.repeat_label_variance`) or ``"exact"`` (the
            oracle ``Var_u σ(Δ_u)``).
        optimizer: ``"lbfgs"`` (full-batch L-BFGS with strong-Wolfe line search; converges in
            tens of evaluations here) or ``"adam"`` (full-batch, as in the paper).
        steps: L-BFGS iterations at most, or Adam steps.
        lr: learning rate (Adam) or initial step (L-BFGS).
        methods: which of ``dpo``, ``corrected``, ``agreement``, ``indirect`` to run.
    """

    seed: int = 0
    policy: str = "tabular"
    hidden: int = 64
    num_pairs: int = 500_000
    num_paired: int = 2_000_000
    num_full: int = 500_000
    alphas: tuple[float, ...] = (1.0, 2.0)
    variance: str = "tabular"
    optimizer: str = "lbfgs"
    steps: int = 300
    lr: float = 1.0
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        self.alphas = check_numbers(self.alphas, "ExperimentConfig.alphas", **NON_NEGATIVE)
        self.methods = tuple(check_names(self.methods, "ExperimentConfig.methods"))
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; valid methods: {', '.join(METHODS)}")
        choices = {"variance": ("tabular", "exact"), "optimizer": ("lbfgs", "adam"),
                   "policy": ("tabular", "mlp")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        check_fields(self, {
            **dict.fromkeys(("num_pairs", "num_paired", "num_full", "steps", "hidden"), COUNT),
            "seed": INDEX, "lr": POSITIVE})


@dataclass
class Cells:
    """Aggregated preference data as dense ``[state, chosen, rejected]`` tables.

    ``weight`` holds how often (or with what total weight) ``chosen`` was preferred over
    ``rejected`` at ``state``; ``extras`` holds per-cell side information of the same shape
    (``pair_variance``, ``agreement``) that objectives read from their ``batch`` argument.
    """

    weight: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


def aggregate(state: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, num_states: int,
              num_actions: int, weight: np.ndarray | None = None) -> Cells:
    """Sum sample weights per (state, chosen, rejected) with one ``bincount``."""
    key = (np.asarray(state) * num_actions + chosen) * num_actions + rejected
    totals = np.bincount(key, weights=weight, minlength=num_states * num_actions**2)
    return Cells(weight=torch.as_tensor(totals.reshape(num_states, num_actions, num_actions)))


def all_margins(log_probs: Tensor) -> Tensor:
    """``m[..., x, a, b] = log π(a|x) − log π(b|x)`` (uniform reference: ``log π_ref`` cancels)."""
    return log_probs[..., :, None] - log_probs[..., None, :]


def minimise(params: list[Tensor], loss_fn, optimizer: str, steps: int, lr: float) -> None:
    """Full-batch minimisation of ``loss_fn()`` over ``params`` with L-BFGS or Adam."""
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)
        return
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


def fit_policy(policy: nn.Module, objective: Objective, cells: Cells, optimizer: str = "lbfgs",
               steps: int = 300, lr: float = 1.0) -> np.ndarray:
    """Minimise the cell-weighted mean of ``objective``; returns ``π[state, action]``."""
    total = cells.weight.sum()

    def loss_fn() -> Tensor:
        margins = all_margins(policy.log_probs())
        return (cells.weight * objective(margins, cells.extras)).sum() / total

    minimise(list(policy.parameters()) + list(objective.parameters()), loss_fn, optimizer,
             steps, lr)
    with torch.no_grad():
        return policy.log_probs().exp().numpy()


def tabular_variance(paired: PairedPairs, num_states: int, num_actions: int) -> Tensor:
    """``Var_u σ(Δ_u)`` for every ``[state, a, b]`` from repeat-labelled items (Lemma 5.3).

    Each annotator labelled one item twice; items are grouped by unordered pair, the estimate
    of :func:`pluralign.reward.joint_likelihood.repeat_label_variance` is computed once per
    unordered pair and written to both orientations (the variance is symmetric in ``a, b``).
    """
    first, second = paired.first, paired.second
    if not (np.array_equal(first.state, second.state)
            and np.array_equal(np.minimum(first.chosen, first.rejected),
                               np.minimum(second.chosen, second.rejected))
            and np.array_equal(np.maximum(first.chosen, first.rejected),
                               np.maximum(second.chosen, second.rejected))):
        raise ConfigError("the tabular variance needs each annotator to label the same item "
                          "twice (sample_paired(..., repeat=True))")
    low = np.minimum(first.chosen, first.rejected)
    high = np.maximum(first.chosen, first.rejected)
    group = (first.state * num_actions + low) * num_actions + high
    variance, _ = repeat_label_variance(torch.as_tensor(first.chosen == low),
                                        torch.as_tensor(second.chosen == low),
                                        torch.as_tensor(group), num_states * num_actions**2)
    upper = variance.reshape(num_states, num_actions, num_actions).triu(diagonal=1)
    return upper + upper.transpose(1, 2)


def fit_type_rewards(pairs: Pairs, num_types: int, num_states: int, num_actions: int,
                     optimizer: str = "lbfgs", steps: int = 300, lr: float = 1.0) -> np.ndarray:
    """Per-type tabular Bradley–Terry rewards ``R[type, state, action]`` from typed labels."""
    cells = aggregate(pairs.type * num_states + pairs.state, pairs.chosen, pairs.rejected,
                      num_types * num_states, num_actions)
    rewards = nn.Parameter(torch.zeros(num_types * num_states, num_actions, dtype=torch.float64))
    total = cells.weight.sum()
    minimise([rewards], lambda: (cells.weight * dpo_loss(all_margins(rewards), 1.0)).sum() / total,
             optimizer, steps, lr)
    return rewards.detach().numpy().reshape(num_types, num_states, num_actions)


def relabel_pairs_with_average_reward(pairs: Pairs, type_rewards: np.ndarray,
                                      type_probs: np.ndarray, num_states: int,
                                      num_actions: int) -> Cells:
    """The indirect route of §6: relabel every sampled pair with the average reward.

    The tabular counterpart of ``pluralign.reward.relabel_with_average_reward`` (text data).

    Each pair ``(a, b)`` becomes soft labels ``q = σ(r̂(a) − r̂(b))`` for ``a ≻ b`` and ``1 − q``
    for ``b ≻ a`` with ``r̂ = Σ_u p(u) R_u``, so DPO's population optimum is ``π ∝ exp(r̂/β)``
    (annotators are BT in reward units, so the relabelled data carry the average reward's scale).
    """
    avg = np.einsum("u,uxa->xa", type_probs, type_rewards)
    x, a, b = pairs.state, pairs.chosen, pairs.rejected
    q = expit(avg[x, a] - avg[x, b])
    return aggregate(np.concatenate([x, x]), np.concatenate([a, b]), np.concatenate([b, a]),
                     num_states, num_actions, weight=np.concatenate([q, 1.0 - q]))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation, or None where it is undefined (one side constant, e.g. a
    uniform π* at a huge β)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b)[0])


def _rho(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def policy_metrics(env: ProximityEnv, policy: np.ndarray) -> dict[str, float | None]:
    """TV to π*, peak offset and Spearman correlations of a ``[state, action]`` policy.

    Like Fig. 4, metrics use the 1-D representation: the policy rolled so that each state sits
    at δ = 0, averaged over states. ``tv_to_optimal`` is ``½ Σ_δ |π̄(δ) − π̄*(δ)|`` on it (the
    paper's numbers, e.g. 0.0437 for DPO's infinite-data optimum); ``tv_to_optimal_per_state``
    is the mean over states of the per-state TV, which also counts per-state sampling noise.
    """
    optimal = env.optimal_policy()
    rolled = env.roll(policy).mean(axis=0)
    return {
        "tv_to_optimal": float(0.5 * np.abs(rolled - env.roll(optimal).mean(axis=0)).sum()),
        "tv_to_optimal_per_state": float(0.5 * np.abs(policy - optimal).sum(axis=1).mean()),
        "peak_offset": int(env.offsets()[np.argmax(rolled)]),
        "spearman_nbc": spearman(rolled, env.roll(env.nbc()).mean(axis=0)),
        "spearman_optimal": spearman(rolled, env.roll(optimal).mean(axis=0)),
    }


@dataclass
class ExperimentResult:
    """Fitted policies (``[state, action]``), their metrics and wall-clock seconds per step."""

    policies: dict[str, np.ndarray]
    metrics: dict[str, Any]
    timings: dict[str, float]


def fit_methods(env: ProximityEnv, config: ExperimentConfig) -> ExperimentResult:
    """Generate the datasets and fit every requested method (see :class:`ExperimentConfig`).

    Timings (seconds) are recorded per dataset (``data/...``) and per method.
    """
    cfg, env_cfg = config, env.config
    rng = np.random.default_rng(cfg.seed)
    shape = (env_cfg.num_states, env_cfg.num_actions)
    fit = {"optimizer": cfg.optimizer, "steps": cfg.steps, "lr": cfg.lr}
    policies: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}

    def policy() -> nn.Module:
        return build_policy(cfg.policy, *shape, hidden=cfg.hidden, seed=cfg.seed)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - start
        return out

    if "dpo" in cfg.methods or "indirect" in cfg.methods:
        pairs = timed("data/pairs", lambda: env.sample_pairs(cfg.num_pairs, rng))
    if "dpo" in cfg.methods:
        cells = aggregate(pairs.state, pairs.chosen, pairs.rejected, *shape)
        policies["dpo"] = timed("dpo", lambda: fit_policy(
            policy(), build_objective("dpo", beta=env_cfg.beta), cells, **fit))
    if "corrected" in cfg.methods:
        paired = timed("data/paired",
                       lambda: env.sample_paired(cfg.num_paired, rng, repeat=True))
        for alpha in cfg.alphas:
            policies[f"corrected_alpha{alpha:g}"] = timed(
                f"corrected_alpha{alpha:g}",
                lambda alpha=alpha: corrected_dpo_policy(env, paired, alpha, policy(),
                                                         cfg.variance, **fit))
    if "agreement" in cfg.methods:
        full = timed("data/full_information",
                     lambda: env.sample_full_information(cfg.num_full, rng))
        policies["agreement"] = timed("agreement",
                                      lambda: agreement_policy(env, full, policy(), **fit))
    if "indirect" in cfg.methods:
        policies["indirect"] = timed("indirect",
                                     lambda: indirect_policy(env, pairs, policy(), **fit))
    metrics: dict[str, Any] = {name: policy_metrics(env, pol) for name, pol in policies.items()}
    metrics["reference"] = {
        "dpo_limit": policy_metrics(env, env.dpo_limit_policy()),
        "optimal": policy_metrics(env, env.optimal_policy()),
    }
    return ExperimentResult(policies=policies, metrics=metrics, timings=timings)


def corrected_dpo_policy(env: ProximityEnv, paired: PairedPairs, alpha: float,
                         policy: nn.Module, variance: str = "tabular",
                         **fit: Any) -> np.ndarray:
    """First-order-corrected DPO (§5) on repeat-labelled paired data; both labels train π."""
    num_states, num_actions = env.config.num_states, env.config.num_actions
    both = [np.concatenate([getattr(paired.first, f), getattr(paired.second, f)])
            for f in ("state", "chosen", "rejected")]
    cells = aggregate(*both, num_states, num_actions)
    cells.extras["pair_variance"] = (
        torch.as_tensor(env.preference_variance(*np.indices(cells.weight.shape)))
        if variance == "exact" else tabular_variance(paired, num_states, num_actions))
    objective = build_objective("corrected_dpo", beta=env.config.beta, correction_alpha=alpha)
    return fit_policy(policy, objective, cells, **fit)


def agreement_policy(env: ProximityEnv, full: FullInformation, policy: nn.Module,
                     **fit: Any) -> np.ndarray:
    """The consistent agreement-only loss (§6) on items labelled by every type."""
    if not np.allclose(env.type_probs, env.type_probs[0]):
        raise ConfigError("the agreement loss is consistent only for equally represented types; "
                          "set type_probs to None (uniform) or drop 'agreement' from methods")
    num_states, num_actions = env.config.num_states, env.config.num_actions
    # Cell (x, a, b) counts the unanimous items whose first response was a and second b; its
    # margin is m(a) − m(b), so agreement +1 / −1 says whether everyone chose a / b.
    weights = [aggregate(full.state[keep], full.first[keep], full.second[keep], num_states,
                         num_actions).weight
               for keep in (full.agreement > 0, full.agreement < 0)]
    cells = Cells(weight=torch.stack(weights),
                  extras={"agreement": torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)})
    objective = build_objective("agreement", beta=env.config.beta,
                                agreement_num_types=env.num_types)
    return fit_policy(policy, objective, cells, **fit)


def indirect_policy(env: ProximityEnv, pairs: Pairs, policy: nn.Module,
                    **fit: Any) -> np.ndarray:
    """The indirect route (§6): per-type rewards → average → relabel → DPO."""
    shape = (env.config.num_states, env.config.num_actions)
    rewards = fit_type_rewards(pairs, env.num_types, *shape, **fit)
    cells = relabel_pairs_with_average_reward(pairs, rewards, env.type_probs, *shape)
    return fit_policy(policy, build_objective("dpo", beta=env.config.beta), cells, **fit)


# ------------------------------------------------------------------------------------ the run
@dataclass
class SimulateConfig(RunFolderOptions):
    """``pluralign simulate`` / ``pluralign experiment dahp``: environment, experiment, folder.

    Attributes:
        environment: the proximity environment ([DAHP, §7.2]).
        experiment: which methods to fit and how.
        output_dir: run folder (config.yaml, metrics.json, policies.csv, policies.png,
            report.html).
    """

    environment: ProximityConfig = field(default_factory=ProximityConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    output_dir: str = "runs/dahp_env"


def run_simulation(config: SimulateConfig) -> dict[str, Any]:
    """Run the §7.2 experiment and write its run folder; return the metrics."""
    env = ProximityEnv(config.environment)
    result = fit_methods(env, config.experiment)
    out = config.output_dir
    write_config(out, config)
    rolled = {name: env.roll(pol).mean(axis=0) for name, pol in result.policies.items()}
    rolled |= {"optimal": env.roll(env.optimal_policy()).mean(axis=0),
               "dpo_limit": env.roll(env.dpo_limit_policy()).mean(axis=0),
               "nbc": env.roll(env.nbc()).mean(axis=0)}
    write_table(out, "policies.csv", pd.DataFrame({"delta": env.offsets(), **rolled}))
    plot_policies(env, result.policies, f"{out}/policies.png")
    metrics = simulate_metrics(result.metrics, result.timings, config.experiment)
    write_report(out, metrics)
    for name, row in result.metrics.items():
        if name != "reference":
            print(f"{name:>18}: TV to pi* {row['tv_to_optimal']:.4f}  peak at delta="
                  f"{row['peak_offset']:+d}  Spearman vs NBC {_rho(row['spearman_nbc'])}")
    print(f"total {sum(result.timings.values()):.1f}s; wrote {out}")
    return metrics


def simulate_metrics(per_method: dict[str, Any], timings: dict[str, float],
                     config: ExperimentConfig) -> dict[str, Any]:
    """``metrics.json`` of a run: per-method metrics at the top level (as returned by
    :func:`fit_methods`), ``timings_s``, and the title, summary, table and figure of the
    report."""
    columns = ["policy", "TV to π*", "TV to π* (per state)", "peak δ", "Spearman vs NBC",
               "Spearman vs π*"]
    keys = ("tv_to_optimal", "tv_to_optimal_per_state", "peak_offset", "spearman_nbc",
            "spearman_optimal")
    named = {**{k: v for k, v in per_method.items() if k != "reference"},
             **{f"{k} (exact)": v for k, v in per_method.get("reference", {}).items()}}
    summary = [f"{config.policy} policies, seed {config.seed}: {config.num_pairs:,} single-label "
               f"pairs, {config.num_paired:,} paired annotators, {config.num_full:,} "
               "all-types items."]
    summary += [f"{name}: TV to π* {row['tv_to_optimal']:.4f}, peak at δ = "
                f"{row['peak_offset']:+d}, Spearman vs NBC {_rho(row['spearman_nbc'])}, vs π* "
                f"{_rho(row['spearman_optimal'])}" for name, row in named.items()]
    summary.append(f"Total time {sum(timings.values()):.1f} s (data generation included).")
    return {
        **per_method,
        "timings_s": timings,
        "title": "pluralign simulate: DAHP proximity environment ([DAHP, §7.2])",
        "summary": summary,
        "tables": [
            {"title": "Policies vs the optimum π* and NBC",
             "columns": columns, "rows": [[name, *(row[k] for k in keys)]
                                          for name, row in named.items()]},
            {"title": "Wall-clock seconds", "columns": ["step", "seconds"],
             "rows": [[k, v] for k, v in timings.items()]},
        ],
        "figures": [{"file": "policies.png", "caption": "Learned policies against the offset "
                     "δ = response − prompt, averaged over states, with the optimum π*, DPO's "
                     "infinite-data limit and NBC ([DAHP, Fig. 4])"}],
        "notes": ["'(exact)' rows are closed-form references: dpo_limit is DPO's infinite-data "
                  "optimum (ranks like NBC), optimal is π* ∝ π_ref·exp(E_u r_u / β)."],
    }
