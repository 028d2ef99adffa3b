"""Seeds as the unit of an experiment: each seed a complete run folder ``seed-<s>/``.

An experiment replicated over seeds (``replicate``, ``group_robust`` and ``composition`` with
``seeds=[...]``) runs seed ``s`` into ``<output_dir>/seed-<s>/`` with its own config and metrics,
then summarises over the seeds (the seed is the unit of the interval: a Student-t interval over
per-seed values, :func:`pluralign.evaluation.replication.paired_seed_interval`).

:func:`run_seeds` reuses a seed whose folder already holds the ``metrics.json`` of the same
configuration (so a run can be split over several invocations: ``seeds=[0]``, then
``seeds=[0,1]``, ...) and refuses one whose finished metrics came from a different
configuration (it would otherwise be silently overwritten or silently mixed into the summary).
One progress bar runs across the seeds, with an ETA from the seeds trained so far.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pluralign.config import config_values
from pluralign.errors import ConfigError
from pluralign.runs import METRICS_FILE, plain


def seed_folder(output_dir: str | Path, seed: int) -> Path:
    """The run folder of one seed: ``<output_dir>/seed-<seed>``."""
    return Path(output_dir) / f"seed-{seed}"


def check_resume(config: Any) -> None:
    """``config.resume`` is a bool and not set together with ``overwrite`` (one ConfigError)."""
    resume, overwrite = config.resume, getattr(config, "overwrite", False)
    if not isinstance(resume, bool) or (resume and overwrite):
        raise ConfigError(f"{type(config).__name__}: resume={resume!r} with overwrite="
                          f"{overwrite!r}; use resume=true to continue the run in output_dir or "
                          "overwrite=true to replace it, not both")
    if resume and getattr(config, "seeds", ()) is None:
        raise ConfigError(f"{type(config).__name__}: resume=true continues a run over seeds; "
                          "set seeds=[...] (a single run is not resumed: use a new output_dir "
                          "or overwrite=true)")


def check_seed_list(seeds: object, where: str) -> list[int]:
    """``seeds`` as a list of distinct integers >= 0, else one :class:`ConfigError` line."""
    if not isinstance(seeds, list) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"{where}.seeds={seeds!r} is invalid; use a list of distinct integers "
                          ">= 0, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}.seeds={seeds!r} repeats a seed")
    return list(seeds)


def finished_metrics(config: Any, output_dir: str | Path) -> dict[str, Any] | None:
    """The metrics a finished run of ``config`` left in ``output_dir``; None when the folder holds
    no readable ``metrics.json``. Finished with another configuration: :class:`ConfigError`
    naming the first differing key and the fix."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict):
        return None
    wanted = json.loads(json.dumps(plain(config_values(config))))
    saved = done.get("config")
    if saved != wanted:
        key = _first_difference(saved, wanted)
        raise ConfigError(f"{path.parent} already holds a finished seed run with another "
                          f"configuration ({key} differs); use another output_dir or remove "
                          "that folder")
    return done


def _first_difference(saved: Any, wanted: Any, prefix: str = "") -> str:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in sorted(set(saved) | set(wanted), key=str):
            if saved.get(key) != wanted.get(key):
                return _first_difference(saved.get(key), wanted.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "config"


def run_seeds(seeds: Sequence[int], seed_config: Callable[[int], Any],
              run: Callable[[Any], dict[str, Any]], *, progress: bool = True,
              desc: str = "seeds", after_seed: Callable[[dict[int, dict[str, Any]]], None]
              | None = None) -> dict[int, dict[str, Any]]:
    """Run (or reuse) every seed; returns ``{seed: metrics}`` in ``seeds`` order.

    ``seed_config(s)`` is seed ``s``'s configuration (its ``output_dir`` the seed's folder,
    :func:`seed_folder`); ``run(config)`` trains it and returns its metrics (which carry
    ``"config"``). Every finished folder is checked before anything trains, so a changed
    configuration fails at once, not after hours. ``after_seed(done)`` is called after every
    seed (e.g. to rewrite the summary).
    """
    from tqdm.auto import tqdm

    configs = {s: seed_config(s) for s in seeds}
    done: dict[int, dict[str, Any]] = {}
    for s, cfg in configs.items():
        metrics = finished_metrics(cfg, cfg.output_dir)
        if metrics is not None:
            done[s] = metrics
    # initial=: reused seeds are not in the rate, so the ETA is that of the seeds still to train
    with tqdm(total=len(configs), initial=len(done), desc=desc, unit="seed",
              disable=not progress) as bar:
        for s, cfg in configs.items():
            if s not in done:
                bar.set_postfix_str(f"seed {s}")
                done[s] = run(cfg)
                bar.update(1)
            if after_seed is not None:
                after_seed({k: done[k] for k in seeds if k in done})
    return {s: done[s] for s in seeds}
