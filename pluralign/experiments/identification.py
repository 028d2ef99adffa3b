"""Is the spread of preference strength identified? (``pluralign experiment identification``)

Issue 22 item 5: the proxy of docs/diagnostic.md on *true* margins, no language model. Per seed
and population, ``n_annotators`` annotators each label ``pairs_per_annotator`` pairs whose true
margin is ``x_j ~ N(0, margin_sd²)``; annotator ``a`` has strength ``β_a`` and prefers the first
response with probability ``σ(β_a · Δ_{a,j})``. Populations (:data:`POPULATIONS`):

* ``gamma_cv2_0.5`` / ``gamma_cv2_1``: ``β_a ~ Gamma`` with mean 1 and CV² 0.5 / 1, ``Δ = x``;
* ``homogeneous``: ``β_a = 1``, ``Δ = x`` (true CV² 0);
* ``direction``: heterogeneous in direction only — two user types (``type_share`` of annotators
  in the first) weigh two features of each pair differently, ``Δ_{a,j} = w_{t(a)} · f_j`` with
  ``w_1 = (1, ρ)``, ``w_2 = (ρ, 1)`` (``ρ = direction_overlap``), every β = 1; the model sees the
  population's average margin ``x_j = w̄ · f_j`` (what one policy for everyone would learn).

Each data set is fitted by maximum likelihood with a Gamma strength (coordinates log E[β],
log CV²) and a margin model ``g`` applied to the observed margin, under two likelihoods:

* ``per-pair``: ``Σ_j log E_β σ(β g(m_j))`` (MixDPO's, β drawn per pair);
* ``panel``: ``Σ_a log E_β Π_{j∈a} σ(β g(m_j))`` (one β per annotator, :mod:`pluralign.panel`).

Margin models: ``one-scale`` (``g(x) = x``; the strength's mean carries the scale) and
``flexible`` (``g(x) = c x + Σ_k a_k tanh(b_k x)`` with ``a, b, c > 0``: a learned monotone odd
transform, trained jointly with the strength — a stand-in for a policy whose margins are free).
Every fit starts from each CV² in ``starts``: if the likelihood identifies CV² the starts agree;
if it does not, they end apart at (nearly) the same likelihood. The table reports, per cell, the
fitted CV² (start-averaged) with a t-interval over seeds, the spread between starts, and the
log-likelihood gap between starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.config import config_values
from pluralign.errors import ConfigError
from pluralign.evaluation.power import panel_wins
from pluralign.evaluation.replication import paired_seed_interval
from pluralign.experiments.base import print_summary
from pluralign.runs import write_config, write_report, write_table
from pluralign.validation import COUNT, OPEN_UNIT, POSITIVE, check_fields

#: Population name -> true CV² of β (None: direction only, β constant).
POPULATIONS: dict[str, float | None] = {"gamma_cv2_0.5": 0.5, "gamma_cv2_1": 1.0,
                                        "homogeneous": 0.0, "direction": None}
MARGIN_MODELS = ("one-scale", "flexible")
LIKELIHOODS = ("per-pair", "panel")
#: Fitted log CV² is kept in this range (CV² from 0.0067, a point mass for every purpose here,
#: to 20); a fit on the lower end reads "no spread".
_LOG_CV2_RANGE = (-5.0, 3.0)
#: Largest weight of the flexible transform (margins of |x| ≤ 5 sd stay under about 100 × sd).
_MAX_WEIGHT = 10.0


@dataclass
class IdentificationConfig:
    """Sizes of the identification experiment (fields documented in the module docstring).

    Attributes:
        output_dir: run folder (config.yaml, metrics.json, fits.csv, table.csv, report.html).
        seeds: one data set per seed and population; intervals are over seeds.
        populations: names from :data:`POPULATIONS`.
        n_annotators / pairs_per_annotator: the design of every data set.
        margin_sd: standard deviation of the true margins ``x`` (β has mean 1).
        type_share / direction_overlap: the ``direction`` population's first-type share and ρ.
        units: tanh units of the flexible margin model.
        starts: initial CV² of every fit (the strength's initial mean is 1).
        max_iter: L-BFGS iterations per fit.
        level: confidence level of the intervals over seeds.
        threads: torch CPU threads.
    """

    output_dir: str = "runs/identification"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    populations: list[str] = field(default_factory=lambda: list(POPULATIONS))
    n_annotators: int = 100
    pairs_per_annotator: int = 8
    margin_sd: float = 2.0
    type_share: float = 0.5
    direction_overlap: float = -0.5
    units: int = 3
    starts: list[float] = field(default_factory=lambda: [0.1, 2.0])
    max_iter: int = 40
    level: float = 0.95
    threads: int = 1

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_fields(self, {"n_annotators": COUNT, "pairs_per_annotator": COUNT,
                            "margin_sd": POSITIVE, "type_share": OPEN_UNIT, "units": COUNT,
                            "max_iter": COUNT, "level": OPEN_UNIT, "threads": COUNT})
        if not -1 < self.direction_overlap < 1:
            raise ConfigError(f"{where}.direction_overlap={self.direction_overlap!r} must be in "
                              "(-1, 1): the two types must weigh the features differently")
        unknown = [p for p in self.populations if p not in POPULATIONS]
        if unknown or not self.populations:
            raise ConfigError(f"{where}.populations={self.populations!r}: use some of "
                              f"{', '.join(POPULATIONS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(f"{where}.seeds={self.seeds!r}: use a list of distinct integers "
                              ">= 0")
        if not self.starts or any(not (isinstance(s, (int, float)) and s > 0)
                                  for s in self.starts):
            raise ConfigError(f"{where}.starts={self.starts!r}: use a list of initial CV² > 0")


# ---------------------------------------------------------------------------------------- data
def simulate(population: str, cfg: IdentificationConfig, seed: int) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """(signed observed margins ``m_j`` = the model's margin of chosen minus rejected, annotator
    index of each pair) for one population and seed (module docstring)."""
    rng = np.random.default_rng([seed, list(POPULATIONS).index(population)])
    a, n = cfg.n_annotators, cfg.pairs_per_annotator
    group = np.repeat(np.arange(a), n)
    if population == "direction":
        rho = cfg.direction_overlap
        weights = np.array([[1.0, rho], [rho, 1.0]])
        types = (rng.random(a) >= cfg.type_share).astype(int)
        mean_w = cfg.type_share * weights[0] + (1 - cfg.type_share) * weights[1]
        features = rng.normal(size=(a * n, 2))
        features *= cfg.margin_sd / np.sqrt((mean_w ** 2).sum())  # sd of x is margin_sd
        x = features @ mean_w
        true = np.einsum("ij,ij->i", features, weights[types[group]])
        beta = np.ones(a)
    else:
        x = rng.normal(scale=cfg.margin_sd, size=a * n)
        true = x
        cv2 = POPULATIONS[population]
        beta = np.ones(a) if cv2 == 0 else rng.gamma(1 / cv2, cv2, size=a)
    return np.where(panel_wins(true, beta, group, rng), x, -x), group


# ---------------------------------------------------------------------------------------- fit
def fit(margins: np.ndarray, group: np.ndarray, margin_model: str, likelihood: str,
        start_cv2: float, cfg: IdentificationConfig) -> dict[str, float]:
    """Maximum-likelihood Gamma strength (and flexible margin transform) from one start.

    Returns ``cv2`` (= 1/shape), ``mean`` (E[β]: learned with the one-scale model, fixed at 1
    with the flexible one, whose transform carries the scale) and ``loglik``.
    """
    import torch
    import torch.nn.functional as F

    from pluralign.numerics import NumericsError, log_gamma_expected_sigmoid
    from pluralign.panel import log_gamma_panel_likelihood

    m = torch.as_tensor(margins, dtype=torch.float64)
    g = torch.as_tensor(group, dtype=torch.int64)
    num_groups = int(group.max()) + 1
    # the flexible transform carries the scale, so E[β] = 1 there (else one flat direction)
    log_mean = torch.zeros((), dtype=torch.float64, requires_grad=margin_model == "one-scale")
    log_cv2 = torch.tensor(math.log(start_cv2), dtype=torch.float64, requires_grad=True)
    params = [log_cv2] + ([log_mean] if margin_model == "one-scale" else [])
    if margin_model == "flexible":
        # g(x) = softplus(c) x + Σ softplus(a_k) tanh(softplus(b_k) x): starts at ≈ x
        raw_c = torch.tensor(math.log(math.expm1(0.9)), dtype=torch.float64, requires_grad=True)
        raw_a = torch.full((cfg.units,), math.log(math.expm1(0.1)), dtype=torch.float64,
                           requires_grad=True)
        raw_b = torch.tensor(np.log(np.expm1(np.geomspace(0.25, 4.0, cfg.units))),
                             dtype=torch.float64, requires_grad=True)
        params += [raw_c, raw_a, raw_b]

    def transform() -> torch.Tensor:
        if margin_model == "one-scale":
            return m
        # bounded weights keep |g| within the kernels' validated range (|Δ| ≤ 100 here)
        units = (F.softplus(raw_a).clamp(max=_MAX_WEIGHT)
                 * torch.tanh(F.softplus(raw_b).clamp(max=_MAX_WEIGHT) * m[:, None]))
        return F.softplus(raw_c).clamp(max=_MAX_WEIGHT) * m + units.sum(dim=1)

    def negative_loglik() -> torch.Tensor:
        shape = torch.exp(-log_cv2.clamp(*_LOG_CV2_RANGE))
        rate = shape / torch.exp(log_mean.clamp(-8.0, 8.0))
        d = transform()
        if likelihood == "panel":
            return -log_gamma_panel_likelihood(d, g, shape, rate, num_groups=num_groups).sum()
        return -log_gamma_expected_sigmoid(d, shape, rate).sum()

    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=cfg.max_iter,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                  tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = negative_loglik()
        loss.backward()
        return loss

    try:
        optimizer.step(closure)
        with torch.no_grad():
            loglik = -float(negative_loglik())
    except NumericsError:  # a line-search trial far outside the kernel's range: counted
        return {"cv2": math.nan, "mean": math.nan, "loglik": math.nan}
    return {"cv2": math.exp(float(log_cv2.detach().clamp(*_LOG_CV2_RANGE))),
            "mean": math.exp(float(log_mean.detach())), "loglik": loglik}


# ---------------------------------------------------------------------------------------- run
def run_identification(cfg: IdentificationConfig) -> dict[str, Any]:
    """Every fit (population × seed × margin model × likelihood × start); the summary table."""
    import torch

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    write_config(out, cfg)
    began = time.perf_counter()
    rows = []
    for seed in cfg.seeds:
        for population in cfg.populations:
            margins, group = simulate(population, cfg, seed)
            for model in MARGIN_MODELS:
                for likelihood in LIKELIHOODS:
                    for start in cfg.starts:
                        rows.append({"seed": seed, "population": population,
                                     "true_cv2": POPULATIONS[population],
                                     "margin_model": model, "likelihood": likelihood,
                                     "start_cv2": start,
                                     **fit(margins, group, model, likelihood, start, cfg)})
    fits = pd.DataFrame(rows)
    write_table(out, "fits.csv", fits)
    table = summarise(fits, cfg.level)
    write_table(out, "table.csv", table)
    metrics = {
        "title": "pluralign identification: is the spread of preference strength identified?",
        "summary": _summary_lines(table),
        "table": [{k: None if isinstance(v, float) and math.isnan(v) else v
                   for k, v in row.items()} for row in table.to_dict(orient="records")],
        "runtime_seconds": time.perf_counter() - began,
        "config": config_values(cfg),
    }
    write_report(out, metrics)
    return metrics


def summarise(fits: pd.DataFrame, level: float) -> pd.DataFrame:
    """One row per population × margin model × likelihood: the start-averaged log CV² over seeds
    (t-interval, shown as CV²), the largest spread of log CV² between starts, and the largest
    log-likelihood gap between starts."""
    rows = []
    keys = ["population", "margin_model", "likelihood"]
    for (population, model, likelihood), all_fits in fits.groupby(keys, sort=False):
        cell = all_fits.dropna(subset=["cv2"])
        per_seed = cell.groupby("seed")
        log_cv2 = per_seed["cv2"].apply(lambda c: float(np.mean(np.log(c))))
        spread = per_seed["cv2"].apply(lambda c: float(np.log(c).max() - np.log(c).min()))
        gap = per_seed["loglik"].apply(lambda v: float(v.max() - v.min()))
        interval = paired_seed_interval(log_cv2.tolist(), level)
        rows.append({
            "population": population, "true_cv2": all_fits["true_cv2"].iloc[0],
            "margin_model": model, "likelihood": likelihood, "seeds": len(log_cv2),
            "cv2": math.exp(interval.mean),
            "cv2_low": math.exp(interval.ci_low) if len(log_cv2) > 1 else math.nan,
            "cv2_high": math.exp(interval.ci_high) if len(log_cv2) > 1 else math.nan,
            "start_spread_log_cv2": float(spread.max()),
            "start_loglik_gap": float(gap.max()),
            "identified": bool(spread.max() < 0.1),
            "failed_fits": int(len(all_fits) - len(cell)),
        })
    return pd.DataFrame(rows)


def _summary_lines(table: pd.DataFrame) -> list[str]:
    lines = []
    for row in table.itertuples():
        truth = "direction only" if row.true_cv2 is None or (
            isinstance(row.true_cv2, float) and math.isnan(row.true_cv2)) else \
            f"true CV² {row.true_cv2:g}"
        starts = ("starts agree" if row.identified else
                  f"starts disagree by ×{math.exp(row.start_spread_log_cv2):.3g} in CV² at a "
                  f"log-likelihood gap ≤ {row.start_loglik_gap:.2g}: NOT identified")
        lines.append(f"{row.population} ({truth}), {row.margin_model}, {row.likelihood}: "
                     f"CV² {row.cv2:.3g} [{row.cv2_low:.3g}, {row.cv2_high:.3g}] over "
                     f"{row.seeds} seeds; {starts}.")
    return lines


def main(cfg: IdentificationConfig) -> dict[str, Any]:
    """Run the experiment and print its table."""
    from rich.console import Console

    metrics = run_identification(cfg)
    print_summary(Console(), metrics, cfg.output_dir)
    return metrics
