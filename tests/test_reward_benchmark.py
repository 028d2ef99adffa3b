"""End to end: the PAL benchmark's claims on a smaller population, and `pluralign pal` commands."""

import json

import pytest
import yaml

from pluralign.cli import main
from pluralign.data.splits import split_by_annotator
from pluralign.data.synthetic import make_population
from pluralign.experiments.pal_benchmark import (
    DEFAULT_POPULATION,
    BenchmarkConfig,
    benchmark_report,
    run_benchmark,
)
from pluralign.runs import write_report


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_benchmark_must_show_claims(tmp_path, cache_dir):
    """Smaller than `pluralign experiment pal_benchmark` (200 users x 80 pairs, 3 opposed types,
    12 epochs)."""
    config = BenchmarkConfig(
        population={**DEFAULT_POPULATION, "n_annotators": 200, "pairs_per_annotator": 80},
        test_pairs_per_user=30, curve=[5, 20, 50], compare_adapt_methods=False,
        pal={"epochs": 12}, bt={"epochs": 12})
    m = run_benchmark(config, out_dir=tmp_path, cache_dir=cache_dir, show_progress=False)
    at20, homogeneous = m["unseen_accuracy_at_20"], m["homogeneous_accuracy"]
    assert at20["pal"] >= at20["bt"] + 0.10
    assert at20["pal"] >= at20["oracle"] - 0.03
    assert m["adjusted_rand_index"] >= 0.9
    assert homogeneous["pal"] >= homogeneous["bt"] - 0.01
    relabel = m["relabel"]
    assert relabel["agreement_relabeled"] > relabel["agreement_original"]
    counts = m["parameter_counts"]
    assert counts["per_user_bt"]["total"] > 50 * counts["pal"]["total"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["sample_efficiency"]["n_pairs"] == [5, 20, 50]
    assert (tmp_path / "sample_efficiency.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").is_file()
    # What `pluralign experiment pal_benchmark` adds: a report page with the figure and the
    # headline numbers.
    page = write_report(tmp_path, benchmark_report(m)).read_text()
    assert page.count("data:image/png") == 1
    assert f"PAL {at20['pal']:.3f}" in page and "PAL (adapted)" in page


def test_pal_train_eval_adapt_commands(tmp_path, cache_dir, capsys):
    pop = make_population(**{**DEFAULT_POPULATION, "n_annotators": 24, "n_prompts": 20,
                             "pairs_per_annotator": 40})
    split = split_by_annotator(pop.dataset, test_size=0.25, seed=0)
    seen, unseen = tmp_path / "seen.parquet", tmp_path / "unseen.parquet"
    split["train"].to_parquet(seen)
    split["test"].to_parquet(unseen)
    common = [f"cache_dir={cache_dir}", "progress=false"]
    model, adapted = tmp_path / "pal", tmp_path / "pal-adapted"
    assert main(["pal", "train", f"data={seen}", "--output-dir", str(model),
                 "pal.n_prototypes=3", "pal.epochs=5", *common]) == 0
    metrics = json.loads((model / "metrics.json").read_text())
    assert 0.5 <= metrics["train_accuracy"] <= 1.0
    assert {p.name for p in model.iterdir()} >= {"model.safetensors", "config.json",
                                                 "config.yaml", "metrics.json", "loss.png"}
    assert main(["pal", "eval", f"model={model}", f"data={unseen}", *common]) == 2
    assert "adapt" in capsys.readouterr().err  # unknown users: a clear error, not a zero
    assert main(["pal", "eval", f"model={model}", f"data={unseen}", "unknown=average",
                 *common]) == 0
    assert main(["pal", "adapt", f"model={model}", f"data={unseen}", "n=10",
                 "--output-dir", str(adapted), *common]) == 0
    groups = json.loads((adapted / "adapted_users.json").read_text())
    assert sorted(groups) == sorted(set(split["test"]["annotator_id"]))
    assert main(["pal", "eval", f"model={adapted}", f"data={unseen}",
                 "--output-dir", str(tmp_path / "eval"), *common]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["pairs"] == len(
        split["test"])
    # --config is the command's own config; loader options are data.options
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({
        "model": str(adapted), "data": {"source": str(unseen), "options": {"limit": 10}}}))
    for options, pairs in ((["--config", str(tmp_path / "eval.yaml")], 10),
                           (["--config", str(tmp_path / "eval.yaml"), "data.options.limit=7"],
                            7)):
        assert main(["pal", "eval", *options,
                     "--output-dir", str(tmp_path / f"eval{pairs}"), *common]) == 0
        written = json.loads((tmp_path / f"eval{pairs}" / "metrics.json").read_text())
        assert written["pairs"] == pairs


def test_shipped_configs_parse():
    from pluralign.config import build_config, config_from_dict
    from pluralign.reward.commands import PalTrainConfig

    bench = config_from_dict(BenchmarkConfig,
                             yaml.safe_load(open("configs/pal_benchmark.yaml", encoding="utf-8")))
    bench.check(bench.population_config().pairs_per_annotator)
    assert bench.pal_config(3, False).pref_dim == 64
    train = build_config(PalTrainConfig, "configs/pal_train.yaml", ["data=pairs.parquet"],
                         "runs/pal")
    assert train.kind == "pal" and train.pal.variant == "A" and train.pal.n_prototypes == 3
    assert train.data.test_size == 0.1 and train.bt is None
