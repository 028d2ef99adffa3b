"""PreferenceTrainer vs TRL's DPOTrainer on the same tiny GPT-NeoX, side by side in one run (CPU).

Every configuration trains the same model (GPT-NeoX, hidden 128, 4 layers, BPE vocabulary ~2k) on
the same synthetic preference pairs with batch 16 and max_length 128, in its own subprocess (so that
peak memory is that configuration's own), on one torch thread. Reported per configuration:

* pairs/s = 16 / median step time, step time = CPU time of the process between the Trainer's
  ``on_step_begin`` and ``on_step_end`` (CPU time, not wall time, which other jobs on a shared
  machine inflate), over the steps after a warm-up;
* peak RSS (``resource.getrusage``) of the process and its growth during training (peak minus the
  RSS just before ``train()``; imports differ between the libraries, the growth is the training's);
* for precomputed reference log-probs, the one-time precompute cost is printed separately.

TRL runs at its defaults (bf16 autocast and gradient checkpointing are TRL's DPOConfig defaults)
and also "matched" (float32, no checkpointing, like ours). Both use TRL's default optimizer
(AdamW fused) and lr; ours uses the same optimizer. MixDPO overheads are step-time ratios to our
DPO, measured step by step interleaved in one process on identical batches (a 1% difference is
far below the noise between processes on a shared machine). TRL at its defaults runs in the first
round only: it is an order of magnitude slower on CPU.

    python bench/trainer.py [--steps 30] [--warmup 5] [--rounds 2] [--overhead-rounds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BATCH = 16
MAX_LENGTH = 128


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _data_model_tokenizer():
    from pluralign.data.synthetic import PopulationConfig, make_population
    from pluralign.training import build_tokenizer, tiny_gpt_neox

    pop = make_population(PopulationConfig(n_annotators=40, pairs_per_annotator=16, n_prompts=64,
                                           seed=0))
    ds = pop.dataset.select_columns(["prompt", "chosen", "rejected"])
    tokenizer = build_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in ds], 2048)
    model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=128, num_hidden_layers=4,
                          num_attention_heads=4, intermediate_size=512)
    return ds, model, tokenizer


def worker(name: str, steps: int, warmup: int) -> dict:
    """Train one configuration for warmup + steps steps; return timings and memory."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    ds, model, tokenizer = _data_model_tokenizer()
    out = tempfile.mkdtemp(prefix=f"bench_{name}_")
    common = dict(output_dir=out, per_device_train_batch_size=BATCH, max_steps=warmup + steps,
                  logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
                  disable_tqdm=True, seed=0, dataloader_num_workers=0)
    t0 = time.process_time()
    if name.startswith("trl"):
        import trl

        extra = {} if name == "trl_defaults" else {"bf16": False, "gradient_checkpointing": False}
        if name == "trl_precompute":
            extra = {"bf16": False, "gradient_checkpointing": False,
                     "precompute_ref_log_probs": True}
        args = trl.DPOConfig(max_length=MAX_LENGTH, **common, **extra)
        trainer = trl.DPOTrainer(model=model, ref_model=None if "precompute" in name else
                                 _copy(model), args=args, train_dataset=ds,
                                 processing_class=tokenizer)
    else:
        from pluralign.training import PreferenceConfig, PreferenceTrainer

        objective = {"ours_dpo": {}, "ours_precompute": {"precompute_ref_log_probs": True},
                     "ours_gamma": {"objective": "mixdpo", "strength": "gamma"},
                     "ours_lognormal": {"objective": "mixdpo", "strength": "lognormal"}}[name]
        args = PreferenceConfig(max_length=MAX_LENGTH, max_prompt_length=64,
                                optim="adamw_torch_fused", learning_rate=1e-6, **common,
                                **objective)
        trainer = PreferenceTrainer(model, args=args, train_dataset=ds, processing_class=tokenizer)
    setup = time.process_time() - t0
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.process_time()

        def on_step_end(self, *a, **k):
            times.append(time.process_time() - self.start)

    trainer.add_callback(Timer())
    rss_before = _rss_kib()
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = statistics.median(times[warmup:])
    return {"name": name, "step_s": step, "pairs_per_s": BATCH / step, "peak_rss_mib": peak / 1024,
            "train_rss_growth_mib": (peak - rss_before) / 1024, "setup_cpu_s": setup}


def overhead(rounds: int) -> dict:
    """MixDPO step time relative to DPO, interleaved step by step in one process on equal batches.

    Three trainers (DPO, MixDPO-Gamma, MixDPO-LogNormal, learnable strengths) start from the same
    weights; each round runs one full optimizer step (forward, backward, step) of each on the same
    batch, in rotating order. The ratio is the median over rounds of the per-round ratios.
    """
    import torch

    from pluralign.training import PreferenceConfig, PreferenceTrainer

    torch.set_num_threads(1)
    ds, model, tokenizer = _data_model_tokenizer()
    out = tempfile.mkdtemp(prefix="bench_overhead_")
    trainers = {}
    for name, kw in (("dpo", {}), ("gamma", {"objective": "mixdpo", "strength": "gamma"}),
                     ("lognormal", {"objective": "mixdpo", "strength": "lognormal"})):
        args = PreferenceConfig(output_dir=out, per_device_train_batch_size=BATCH, use_cpu=True,
                                report_to="none", disable_tqdm=True, optim="adamw_torch_fused",
                                learning_rate=1e-6, max_length=MAX_LENGTH, **kw)
        trainer = PreferenceTrainer(_copy(model), args=args, train_dataset=ds,
                                    processing_class=tokenizer)
        trainer.create_optimizer()
        trainers[name] = trainer
    batches = list(iter(trainers["dpo"].get_train_dataloader()))
    times: dict[str, list[float]] = {name: [] for name in trainers}
    order = list(trainers)
    for r in range(rounds):
        batch = batches[r % len(batches)]
        for name in order[r % 3:] + order[: r % 3]:
            trainer = trainers[name]
            start = time.process_time()
            trainer.model.train()
            trainer.compute_loss(trainer.model, dict(batch)).backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.objective.zero_grad(set_to_none=True)
            times[name].append(time.process_time() - start)
    skip = 3  # warm-up rounds
    return {name: statistics.median(t / d for t, d in zip(times[name][skip:],
                                                          times["dpo"][skip:], strict=True))
            for name in ("gamma", "lognormal")} | {
        "dpo_step_s": statistics.median(times["dpo"][skip:])}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _run(name: str, steps: int, warmup: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(steps),
                           "--warmup", str(warmup)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--overhead-rounds", type=int, default=40)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker == "overhead":
        print(json.dumps(overhead(a.steps)))
        return
    if a.worker:
        print(json.dumps(worker(a.worker, a.steps, a.warmup)))
        return
    results: dict[str, list[dict]] = {}
    names = ["ours_dpo", "trl_defaults", "trl_matched", "ours_precompute", "trl_precompute"]
    for round_ in range(a.rounds):
        for name in names:
            if name == "trl_defaults" and round_:  # ~10x slower than the rest; once is enough
                continue
            results.setdefault(name, []).append(_run(name, a.steps, a.warmup))
            r = results[name][-1]
            print(f"  {name:16s} {r['pairs_per_s']:7.1f} pairs/s  step {r['step_s'] * 1e3:7.1f} ms"
                  f"  peak RSS {r['peak_rss_mib']:6.0f} MiB (+{r['train_rss_growth_mib']:.0f})",
                  flush=True)
    best = {n: min(rs, key=lambda r: r["step_s"]) for n, rs in results.items()}
    step = {n: min(r["step_s"] for r in rs) for n, rs in results.items()}
    print(f"\nPreferenceTrainer vs TRL DPOTrainer (GPT-NeoX tiny, batch {BATCH}, max_length "
          f"{MAX_LENGTH}, CPU, 1 thread; best of {a.rounds} rounds of {a.steps} steps)")
    print(f"{'configuration':18s} {'pairs/s':>8s} {'peak RSS MiB':>13s} {'train growth MiB':>17s}")
    for n in names:
        r = best[n]
        print(f"{n:18s} {r['pairs_per_s']:8.1f} {r['peak_rss_mib']:13.0f} "
              f"{r['train_rss_growth_mib']:17.0f}")
    print("\nratios (higher pairs/s is better; memory ratio < 1 means we use less)")
    for ours, theirs in [("ours_dpo", "trl_defaults"), ("ours_dpo", "trl_matched"),
                         ("ours_precompute", "trl_defaults"), ("ours_precompute", "trl_matched"),
                         ("ours_precompute", "trl_precompute")]:
        rss = best[ours]["peak_rss_mib"] / best[theirs]["peak_rss_mib"]
        growth = best[ours]["train_rss_growth_mib"] / max(best[theirs]["train_rss_growth_mib"], 1)
        print(f"  {ours} / {theirs}: pairs/s x{step[theirs] / step[ours]:.2f}, "
              f"peak RSS x{rss:.2f}, train growth x{growth:.2f}")
    over = _run("overhead", a.overhead_rounds, 0)
    print(f"\nMixDPO step-time overhead vs DPO in PreferenceTrainer (interleaved, "
          f"{a.overhead_rounds} rounds, DPO step {over['dpo_step_s'] * 1e3:.0f} ms):")
    for family, goal in (("gamma", 1.02), ("lognormal", 1.01)):
        print(f"  MixDPO-{family}: x{over[family]:.3f} (goal <= {goal}; paper: "
              f"{'1.10' if family == 'gamma' else '1.02'})")


if __name__ == "__main__":
    main()
