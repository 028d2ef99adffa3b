"""Data-layer throughput and memory, measured side by side in one run.

    .venv/bin/python bench/data.py            # full: 100k and 1M synthetic pairs, 100k-row loads
    .venv/bin/python bench/data.py --quick    # 10x smaller sizes (smoke run)

Prints pairs/s of synthetic generation (vectorised, vs a per-pair Python reference on the same
model), pairs/s of ``load_preferences`` on a 100k-row JSON Lines file, the same rows as Parquet,
and on the PRISM and HH-RLHF fixtures scaled up, and the peak resident memory of generating 1M
pairs. Each measurement runs in a fresh subprocess so peak memory is its own.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import machine

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, __ROOT__)
task, arg = sys.argv[1], json.loads(sys.argv[2])
import datasets, pluralign.data  # baseline = interpreter + libraries
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if task == "generate":
    from pluralign.data.synthetic import PopulationConfig, make_population
    cfg = PopulationConfig(**arg)
    t = time.perf_counter(); pop = make_population(cfg); dt = time.perf_counter() - t
    n = len(pop.dataset)
elif task == "reference":
    import math, random
    import datasets
    from pluralign.data.synthetic import PopulationConfig, make_population
    from pluralign.data.schema import encode_mapping
    base = make_population(PopulationConfig(**dict(arg, n_annotators=1, pairs_per_annotator=1)))
    cfg, truth = base.config, base.truth
    rng = random.Random(0)
    t = time.perf_counter()
    rewards = truth.type_rewards().tolist()
    rows = []
    for i in range(arg["n_annotators"] * arg["pairs_per_annotator"]):
        ann = i // cfg.pairs_per_annotator
        t_ = rng.randrange(cfg.n_types); beta = math.exp(rng.gauss(cfg.mu, cfg.sigma))
        p = rng.randrange(cfg.n_prompts); a, b = rng.sample(range(cfg.responses_per_prompt), 2)
        ra, rb = p * cfg.responses_per_prompt + a, p * cfg.responses_per_prompt + b
        win = rng.random() < 1 / (1 + math.exp(-beta * (rewards[t_][ra] - rewards[t_][rb])))
        c, r = (ra, rb) if win else (rb, ra)
        rows.append({"prompt": base.prompts[p], "chosen": base.responses[c],
                     "rejected": base.responses[r], "annotator_id": f"a{ann:05d}",
                     "attributes": encode_mapping({"age": "x"}), "context": "{}",
                     "item_id": f"p{p}:r{min(a, b)}-{max(a, b)}"})
    ds = datasets.Dataset.from_list(rows)
    dt = time.perf_counter() - t
    n = len(ds)
else:
    from pluralign.data import load_preferences
    t = time.perf_counter(); ds = load_preferences(arg["source"], **arg.get("options", {}))
    dt = time.perf_counter() - t
    n = len(ds)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "seconds": dt, "peak_rss_mb": rss / 1024, "base_rss_mb": rss0 / 1024}))
"""


def measure(task: str, arg: dict) -> dict:
    code = _CHILD.replace("__ROOT__", repr(str(ROOT)))
    done = subprocess.run([sys.executable, "-c", code, task, json.dumps(arg)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def scale_prism(folder: Path, copies: int) -> Path:
    """The PRISM fixture with every conversation and user copied ``copies`` times."""
    out = folder / "prism"
    out.mkdir()
    conv = [json.loads(x) for x in (FIXTURES / "prism" / "conversations.jsonl").open()]
    survey = [json.loads(x) for x in (FIXTURES / "prism" / "survey.jsonl").open()]
    with open(out / "survey.jsonl", "w") as handle:
        for k in range(copies):
            for s in survey:
                handle.write(json.dumps(dict(s, user_id=f"{s['user_id']}_{k}")) + "\n")
    with open(out / "conversations.jsonl", "w") as handle:
        for k in range(copies):
            for c in conv:
                handle.write(json.dumps(dict(c, user_id=f"{c['user_id']}_{k}",
                                             conversation_id=f"{c['conversation_id']}_{k}"))
                             + "\n")
    return out


def scale_hh(folder: Path, rows: int) -> Path:
    """A ``train.jsonl.gz`` of ``rows`` HH transcripts cycled from the fixture."""
    base = [json.loads(x) for x in gzip.open(FIXTURES / "hh_rlhf" / "helpful-base" /
                                             "train.jsonl.gz", "rt")]
    path = folder / "train.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        for i in range(rows):
            rec = base[i % len(base)]
            handle.write(json.dumps({"chosen": rec["chosen"] + f" ({i})",
                                     "rejected": rec["rejected"]}) + "\n")
    return path


def main() -> None:
    print(f"machine: {machine()}", flush=True)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    small = {"n_annotators": 5000 // scale, "pairs_per_annotator": 20, "n_prompts": 500}
    large = {"n_annotators": 10000 // scale, "pairs_per_annotator": 100, "n_prompts": 2000}

    print(f"{'measurement':<52} {'pairs':>9} {'seconds':>8} {'pairs/s':>10} {'peak MB':>8}")

    def report(name: str, r: dict) -> float:
        rate = r["n"] / r["seconds"]
        print(f"{name:<52} {r['n']:>9} {r['seconds']:>8.2f} {rate:>10.0f} "
              f"{r['peak_rss_mb']:>8.0f}")
        return rate

    vec = report("synthetic: make_population (vectorised)", measure("generate", small))
    ref = report("synthetic: per-pair Python loop + from_list (ref)", measure("reference", small))
    big = measure("generate", large)
    report("synthetic: make_population, large", big)
    print(f"  -> vectorised / per-pair reference speed ratio: {vec / ref:.1f}x")
    print(f"  -> large run: {big['n']} pairs, peak RSS {big['peak_rss_mb']:.0f} MB "
          f"({big['peak_rss_mb'] - big['base_rss_mb']:.0f} MB above the "
          f"{big['base_rss_mb']:.0f} MB of the interpreter with datasets/pluralign imported)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sys.path.insert(0, str(ROOT))
        from pluralign.data.synthetic import PopulationConfig, make_population

        pop = make_population(PopulationConfig(**small))
        jsonl = tmp_path / "pairs.jsonl"
        cols = ["prompt", "chosen", "rejected", "annotator_id", "attributes", "context",
                "item_id"]
        pop.dataset.select_columns(cols).to_json(jsonl, lines=True)
        parquet = tmp_path / "pairs.parquet"
        pop.dataset.select_columns(cols).to_parquet(parquet)
        j = report("load: generic .jsonl", measure("load", {"source": str(jsonl)}))
        p = report("load: generic .parquet", measure("load", {"source": str(parquet)}))
        print(f"  -> parquet / jsonl speed ratio: {p / j:.1f}x")
        report("load: PRISM fixture x2000 (folder)",
               measure("load", {"source": str(scale_prism(tmp_path, 2000 // scale))}))
        report("load: HH-RLHF .jsonl.gz",
               measure("load", {"source": str(scale_hh(tmp_path, 100000 // scale))}))


if __name__ == "__main__":
    main()
