"""``pluralign diagnose``: the preference-strength heterogeneity diagnostic as a command; its
config dataclass and the one function that writes the run folder (:mod:`pluralign.runs`). The
diagnostic itself is :mod:`pluralign.evaluation.diagnose`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pluralign.errors import ConfigError
from pluralign.runs import RunFolderOptions, read_table
from pluralign.validation import (
    COUNT,
    INDEX,
    NON_NEGATIVE,
    POSITIVE,
    check_fields,
    check_names,
    check_number,
)


@dataclass
class DiagnoseConfig(RunFolderOptions):
    """``pluralign diagnose``: the preference-strength heterogeneity diagnostic.

    Attributes:
        margins: CSV/parquet with one margin per pair (numbers; NaN/inf rows are excluded).
        population: saved synthetic population folder (its true margins); not with
            ``margins``.
        column: margin column (default: margin; true_margin for ``population``).
        family: fitted strength family, gamma or lognormal.
        by: subgroup columns: a strength fit per group (mean, CV^2 with CIs) and a test that
            the groups share one distribution.
        cluster: resampling unit of the bootstrap, e.g. annotator_id.
        groups: annotator-id column (e.g. annotator_id): adds the panel fit (one beta per
            annotator; identifies the spread of beta even when the margins come from a model)
            beside the per-pair fit, with an annotator bootstrap.
        power: also simulate the power of the fit's point-mass test at your own fitted
            distribution, margins and annotators (power_fit_sims refits).
        power_fit_sims: simulations for power=true.
        runs: MixDPO run folders whose logged Var[beta] and E[beta] get a CV^2 trajectory verdict.
        compare: name -> margins file, to rank several datasets by CV^2.
        n_boot: bootstrap refits (0: fits without bootstrap intervals).
        seed: bootstrap and power-simulation seed.
        power_pairs: pairs per population (one or a list) at which to simulate the power to
            separate CV^2 power_cv2_a from power_cv2_b at 95% (Gamma fits on true margins).
        power_cv2_a: CV^2 of the first simulated population.
        power_cv2_b: CV^2 of the second simulated population (0 = one beta for everyone).
        power_pairs_per_annotator: pairs each simulated annotator labels with one beta.
        power_margin_scale: standard deviation of the simulated true margins.
        power_sims: simulated pairs of populations per power estimate.
        output_dir: run folder.
    """

    margins: str | None = None
    population: str | None = None
    column: str | None = None
    family: str = "gamma"
    by: list[str] = field(default_factory=list)
    cluster: str | None = None
    groups: str | None = None
    power: bool = False
    power_fit_sims: int = 20
    runs: list[str] = field(default_factory=list)
    compare: dict[str, str] = field(default_factory=dict)
    n_boot: int = 100
    seed: int = 0
    power_pairs: int | list[int] = field(default_factory=list)
    power_cv2_a: float = 0.75
    power_cv2_b: float = 0.5
    power_pairs_per_annotator: int = 1
    power_margin_scale: float = 2.0
    power_sims: int = 100
    output_dir: str | None = None

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ConfigError("diagnose needs --output-dir DIR")
        if not isinstance(self.power_pairs, list):
            self.power_pairs = [self.power_pairs]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in self.power_pairs):
            raise ConfigError(f"power_pairs={self.power_pairs!r}: give whole numbers of "
                                  "pairs, e.g. power_pairs=2000 or \"power_pairs=[500, 2000]\"")
        if self.margins and self.population:
            raise ConfigError(f"margins={self.margins} and population={self.population} are "
                              "both set; diagnose reads one of them: remove the other (compare "
                              "datasets with compare.NAME=FILE)")
        if self.family not in ("gamma", "lognormal"):
            raise ConfigError(f"family={self.family!r} is unknown; use gamma or lognormal")
        check_fields(self, {"n_boot": INDEX, "seed": INDEX,  # n_boot 0: no bootstrap CIs
                            **dict.fromkeys(("power_cv2_a", "power_cv2_b"), NON_NEGATIVE),
                            "power_margin_scale": POSITIVE,
                            **dict.fromkeys(("power_pairs_per_annotator", "power_sims",
                                             "power_fit_sims"), COUNT)})
        if not isinstance(self.power, bool):
            raise ConfigError(f"power={self.power!r}: use power=true or power=false")
        for n in self.power_pairs:
            check_number(n, "DiagnoseConfig.power_pairs", **COUNT)
        self.by = check_names(self.by, "DiagnoseConfig.by")
        self.runs = check_names(self.runs, "DiagnoseConfig.runs") if self.runs else []
        if not isinstance(self.compare, dict) or not all(
                isinstance(f, str) and f for f in self.compare.values()):
            raise ConfigError(f"DiagnoseConfig.compare={self.compare!r} is invalid; use a "
                              "mapping name -> margins file, e.g. compare.prism=a.csv")


def run_diagnosis(config: DiagnoseConfig) -> dict[str, Any]:
    """Fit, profile and verdict as asked; write the run folder (config.yaml, figures,
    metrics.json, report.html)."""
    import numpy as np

    from pluralign.evaluation.diagnose import compare_heterogeneity, diagnose
    from pluralign.evaluation.plots import plot_variance_trajectories
    from pluralign.runs import write_config, write_report, write_table

    out = Path(config.output_dir)
    column = config.column or ("true_margin" if config.population else "margin")
    df = None
    if config.population:
        from pluralign.data import to_pandas
        from pluralign.data.synthetic import load_population

        df = to_pandas(load_population(config.population).dataset)
    elif config.margins:
        wanted = [column, *config.by, *(c for c in (config.cluster, config.groups) if c)]
        df = read_table(config.margins, required=wanted)
        _check_numeric(df, column, config.margins)
    runs = {Path(r).name or r: r for r in config.runs}
    metrics: dict[str, Any] = {"title": "pluralign diagnose", "figures": [], "diagnostics": {}}
    if df is not None or runs:
        if df is not None and config.groups and config.groups not in df.columns:
            raise ConfigError(f"groups={config.groups}: no such column in the data; columns: "
                              f"{sorted(map(str, df.columns))}")
        d = diagnose(df, margin=column, family=config.family, by=config.by, runs=runs,
                     cluster=config.cluster, groups=config.groups, n_boot=config.n_boot,
                     seed=config.seed)
        metrics["summary"] = d.summary
        if d.fit is not None and d.fit.identification.get("labels_at_chance"):
            unidentified = "strength scale not identified: " + next(
                n for n in d.fit.notes if n.startswith("the labels are no more likely"))
            metrics["summary"] = [unidentified, *d.summary]
            metrics["diagnostics"]["strength scale"] = unidentified
        metrics["diagnosis"] = d.to_dict()
        if d.subgroups is not None:
            write_table(out, "subgroup_strength.csv", d.subgroups.table)
        metrics["diagnostics"].update({k: v.explanation for k, v in d.trajectories.items()})
        if d.trajectories:
            plot_variance_trajectories(d.trajectories, out / "fig4_beta_variance.png")
            metrics["figures"].append({"file": "fig4_beta_variance.png",
                                       "caption": "Learned Var[beta] during training"})
    if config.compare:
        cmp = compare_heterogeneity({n: np.asarray(read_table(f, required=(column,))[column],
                                                      dtype=float)
                                     for n, f in config.compare.items()}, config.family,
                                    n_boot=config.n_boot,
                                    seed=config.seed)
        metrics["comparison"] = cmp.to_dict()
        metrics["diagnostics"]["ranking by CV²"] = " > ".join(cmp.ranking)
    if config.power:
        if df is None:
            raise ConfigError("power=true needs margins or population (the design to simulate)")
        _power_at_fit(config, d, df, column, metrics)
    if config.power_pairs:
        _power(config, metrics)
    if len(metrics) == 3 and not metrics["diagnostics"]:
        raise ConfigError("nothing to diagnose: set margins, population, runs, compare or "
                              "power_pairs")
    write_config(out, config)
    path = write_report(out, metrics)
    for line in metrics.get("summary", []) + [f"{k}: {v}" for k, v in
                                               metrics["diagnostics"].items()]:
        print(line)
    print(f"wrote {path}")
    return metrics


def _check_numeric(df: Any, column: str, source: str) -> None:
    """Refuse a margin column holding text (other than NaN/inf spellings) naming the row."""
    import pandas as pd

    numbers = pd.to_numeric(df[column], errors="coerce")
    text = numbers.isna() & df[column].notna()
    if text.any():
        row = int(text.to_numpy().nonzero()[0][0])
        raise ConfigError(f"{source}: column {column!r} holds text, not margins: "
                          f"{int(text.sum())} row(s), the first row {row} = "
                          f"{df[column].iloc[row]!r}; give numbers (or set column=NAME)")


def _power(config: DiagnoseConfig, metrics: dict[str, Any]) -> None:
    """Simulated power to separate the two CV² at each ``power_pairs`` (into ``metrics``)."""
    from pluralign.evaluation.power import separation_power

    results = [separation_power(n, config.power_cv2_a, config.power_cv2_b,
                                pairs_per_annotator=config.power_pairs_per_annotator,
                                margin_scale=config.power_margin_scale, n_sims=config.power_sims,
                                seed=config.seed)
               for n in config.power_pairs]
    metrics["power"] = [r.to_dict() for r in results]
    for r in results:
        metrics["diagnostics"][f"power at {r.n_pairs} pairs"] = (
            f"separates CV² {r.cv2_a:g} from {r.cv2_b:g} at 95% in {r.power:.0%} of {r.n_sims} "
            f"simulations (95% CI {r.power_ci[0]:.0%}–{r.power_ci[1]:.0%}; "
            f"{r.pairs_per_annotator} pair(s) per annotator)")


def _power_at_fit(config: DiagnoseConfig, d: Any, df: Any, column: str,
                  metrics: dict[str, Any]) -> None:
    """power=true: the power of the fit's own point-mass test at the fitted distribution and the
    data's design (into ``metrics``)."""
    import numpy as np
    import pandas as pd

    from pluralign.evaluation.power import power_at_fit

    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(values)
    fit = d.panel if d.panel is not None else d.fit
    groups = df.loc[keep, config.groups].tolist() if d.panel is not None else None
    r = power_at_fit(values[keep], fit, groups=groups, n_sims=config.power_fit_sims,
                     seed=config.seed)
    metrics["power_at_fit"] = r.to_dict()
    metrics["diagnostics"]["power at your fit"] = (
        f"if β were distributed as the {r.likelihood} {fit.family} fit says (CV² {r.cv2:.3g}), "
        f"data with your {r.n_pairs} margins"
        + (f" and {r.n_annotators} annotators" if r.n_annotators else "")
        + f" would reject one β for all (the verdict's point-mass test, 5%) in {r.power:.0%} of "
        f"{r.n_sims} simulations (95% CI {r.power_ci[0]:.0%}–{r.power_ci[1]:.0%})")
