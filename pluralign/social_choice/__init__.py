"""Social-choice analysis of preference aggregation ([DAHP, §4; §7.1; App. E]).

Normalized Borda count (what DPO optimises under heterogeneous preferences), the user-weighted
average reward (what it should optimise), the infinite-data DPO optimum over a finite option set,
Luce–Shepard rewards from survey shares, and the min-TV sensitivity of NBC to the sampling
distribution of alternatives; wide survey files (SPSS/Stata/csv/parquet) read into the long
respondent table by :func:`read_survey`.
"""

from pluralign.social_choice.borda import (
    average_reward,
    dpo_limit,
    normalized_borda,
    preference_matrix,
    ranking,
)
from pluralign.social_choice.errors import SocialChoiceError
from pluralign.social_choice.sensitivity import SensitivityResult, min_tv_to_flip, sensitivity
from pluralign.social_choice.shares import (
    QuestionShares,
    luce_shepard_rewards,
    shares_from_respondents,
    shares_from_share_table,
)
from pluralign.social_choice.surveys import SurveyTable, read_survey

__all__ = [
    "QuestionShares",
    "SensitivityResult",
    "SocialChoiceError",
    "SurveyTable",
    "average_reward",
    "dpo_limit",
    "luce_shepard_rewards",
    "min_tv_to_flip",
    "normalized_borda",
    "preference_matrix",
    "ranking",
    "read_survey",
    "sensitivity",
    "shares_from_respondents",
    "shares_from_share_table",
]
