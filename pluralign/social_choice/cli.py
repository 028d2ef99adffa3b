"""``pluralign nbc``: argument parsing plus one call of
:func:`pluralign.social_choice.analysis.run_analysis`."""

from __future__ import annotations

import argparse

from pluralign.config import add_config_arguments, config_from_args
from pluralign.runs import run_guarded

EPILOG = r"""Examples:
  pluralign nbc table=survey.csv --output-dir runs/pew_nbc
  pluralign nbc table=survey.parquet options=options.csv skip_incomplete=true --output-dir runs/pew
  pluralign nbc table=shares.csv question=Q17 eps=1e-5 --output-dir runs/shares_nbc
  pluralign nbc table=ATP_W79.sav type_column=F_PARTYSUM_FINAL weight_column=WEIGHT_W79 \
      'questions="*_W79"' --output-dir runs/w79
  pluralign nbc table=wide.csv type_column=party 'questions=re:EV.*' missing_codes=[99] \
      --output-dir runs/wide

TABLE is either respondent-level (columns question, type, answer and optionally weight) or a
shares table (columns question, type, option, share and optionally type_weight); csv, parquet
and jsonl are read by suffix. options is a csv with columns question, option that declares
every question's options in order (answers outside it are errors; options nobody chose get the
share floor).

TABLE may also be a wide survey file, one row per respondent and one column per question (Pew
ATP waves): .sav/.zsav/.dta always, csv/parquet when type_column is set. Types are
type_column's value labels and options each question's labels, in label order (unlabelled
csv/parquet: the values seen); missing_codes (default 98/99), SPSS user-missing answers and
empty cells are dropped and counted in the output and in metrics.json ("dropped"). A glob
starts with YAML's alias mark `*`: quote it, 'questions="*_W79"'. Without questions and
weight_column, a column named like a weight (WEIGHT_W79) or holding many non-integral numbers is
refused as a question: name it in weight_column.

The run folder gets config.yaml, metrics.json, questions.csv (rankings by average
reward, NBC and DPO's infinite-data optimum, disagreement, min TV to flip), options.csv
(per-option average reward, NBC before/after the flip, DPO's induced reward),
bump.png (Fig. 1), min_tv_cdf.png (Fig. 2) and report.html (all of it on one page;
`pluralign report --output-dir RUN` rebuilds it).
"""


def add_nbc_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pluralign nbc``."""
    from pluralign.social_choice.analysis import NBCConfig

    add_config_arguments(parser, NBCConfig, EPILOG)


def run_nbc(args: argparse.Namespace) -> int:
    """Run the analysis and write the run folder."""
    from pluralign.social_choice.analysis import NBCConfig, run_analysis

    run_guarded(config_from_args(NBCConfig, args)[0], run_analysis)
    return 0
