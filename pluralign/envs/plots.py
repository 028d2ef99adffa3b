"""Fig. 4-style plot of the proximity experiment: policies against the offset δ = y − x."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pluralign.envs.proximity import ProximityEnv  # noqa: E402
from pluralign.io import atomic_path  # noqa: E402

PANELS = (
    ("(a) DPO ≈ NBC", ("dpo",)),
    ("(b) first-order-corrected DPO", ("corrected",)),
    ("(c) full information", ("agreement", "indirect")),
)


def _band(ax, env: ProximityEnv, table: np.ndarray, label: str, **style) -> None:
    rolled = env.roll(table)
    mean = rolled.mean(axis=0)
    sem = rolled.std(axis=0, ddof=1) / np.sqrt(len(rolled)) if len(rolled) > 1 else 0 * mean
    (line,) = ax.plot(env.offsets(), mean, label=label, **style)
    ax.fill_between(env.offsets(), mean - sem, mean + sem, alpha=0.25, color=line.get_color())


def plot_policies(env: ProximityEnv, policies: dict[str, np.ndarray], path: str | Path) -> Path:
    """Three panels (DPO; corrected DPO; agreement/indirect), each with π* and the DPO limit.

    Every policy is rolled so that the state sits at δ = 0 and averaged over states (bands:
    ±1 standard error across states). NBC is drawn on a second axis in panel (a).
    """
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, (title, prefixes) in zip(axes, PANELS, strict=True):
        _band(ax, env, env.optimal_policy(), "π* (average reward)", color="black", lw=2)
        _band(ax, env, env.dpo_limit_policy(), "DPO, infinite data", color="gray", ls="--")
        for name, table in policies.items():
            if name.startswith(prefixes):
                _band(ax, env, table, name)
        if prefixes == ("dpo",):
            twin = ax.twinx()
            twin.plot(env.offsets(), env.roll(env.nbc()).mean(axis=0), color="tab:red", ls=":",
                      label="NBC (right axis)")
            twin.set_ylabel("NBC")
            twin.legend(loc="upper right", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("δ = response − prompt")
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("policy probability (mean over states)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
