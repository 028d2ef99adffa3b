"""Evaluation: preference margins, subgroup tables, heterogeneity diagnostic, win rates, reports.

Names are imported lazily so that ``import pluralign.evaluation`` (and ``pluralign --help``) stays
fast and does not pull in torch or transformers until a model is actually evaluated.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvaluationError": "errors",
    "preference_margins": "margins",
    "subgroup_table": "subgroups",
    "margin_gains": "subgroups",
    "SubgroupTable": "subgroups",
    "fit_strength": "strength_fit",
    "StrengthFit": "strength_fit",
    "cv2_difference_test": "strength_fit",
    "fit_verdict": "diagnose",
    "verdict_explanation": "diagnose",
    "separation_power": "power",
    "power_at_fit": "power",
    "diagnose": "diagnose",
    "trajectory_verdict": "diagnose",
    "compare_heterogeneity": "diagnose",
    "win_rate_stats": "winrate",
    "compare_win_rates": "winrate",
    "length_controlled_win_rate": "winrate",
    "sign_flip_test": "winrate",
    "Judge": "judges",
    "RewardModelJudge": "judges",
    "HTTPJudge": "judges",
    "judge_pairs": "judges",
    "generate_responses": "generation",
    "composition_matrix": "composition",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pluralign.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pluralign.evaluation.{_EXPORTS[name]}"), name)
