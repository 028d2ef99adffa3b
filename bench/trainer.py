"""PreferenceTrainer vs TRL's DPOTrainer, side by side in one run, with the machine named (CPU).

Two models, the same data, batches, optimizer (AdamW, fused) and learning rate for both libraries:

* ``tiny``: GPT-NeoX, hidden 256, 4 layers, BPE vocabulary ~2k, trained in full; batch 16;
* ``smollm2``: SmolLM2-135M-Instruct with LoRA (r=16 on q, k, v, o; the reference is the base
  model with the adapters disabled, in both libraries); batch 4.

Both on the synthetic population's pairs (plain prompts), max_length 128 (ours also
max_prompt_length 64; no prompt here is that long). Settings:

* ``defaults``: each library at its own defaults (TRL: bf16 autocast and gradient checkpointing;
  pluralign: float32, shared-prompt + padding-free packing);
* ``fp32``, ``bf16``, ``bf16+precomputed`` (precomputed reference log-probs): matched, no
  gradient checkpointing; each library's other defaults (TRL pads chosen and rejected to the
  longest row, pluralign packs);
* ``bf16, float32 reference`` (ours only): the paper's setting, ``reference_dtype: float32``.

Each (library, setting) trains in its own subprocess on one torch thread; step time = CPU time of
the process between the Trainer's ``on_step_begin`` and ``on_step_end`` (CPU time: a shared
machine inflates wall time), median over the steps after a warm-up; pairs/s = batch / step time.
Rounds alternate the libraries (ours first in even rounds, TRL first in odd ones). Reported:
median pairs/s over rounds with the spread (min–max), and the median (min–max) over rounds of the
per-round ratio ours/TRL.

Compute floor (per model, fp32 and bf16, in every round): over the same batches as pluralign's run
(its sampler), the unique tokens of each batch (each pair's prompt once, then chosen, then
rejected, no padding) concatenated and cut into rows as wide as the batch's longest pair (plain
causal attention): the model's transformer over all of them and its LM head only on the states
that predict a completion token (the least any DPO loss needs), forward and backward of their mean
next-token loss (policy), plus the same forward under ``inference_mode`` (reference: a frozen
copy, or the adapters disabled as pluralign does); no optimizer step. Printed: floor pairs/s, the
per-round ratio of pluralign's step time to the floor's, and of the floor's pairs/s to TRL's. An
exact DPO step does about the floor's work or more (the floor's plain causal rows attend across
pairs, a little more than a step needs), so floor / TRL is about the most any exact method can
gain over TRL on these batches.

MixDPO overhead (tiny model, float32): DPO, MixDPO-Gamma and MixDPO-LogNormal trainers (learnable
strengths) from the same weights, one optimizer step each on the same batch per round, in rotating
order, in one process; the median (min–max) over rounds of the per-round step-time ratio to DPO.
Panel MixDPO-Gamma (``strength_unit: annotator``) steps on its own batches of whole annotators
(16 pairs each, the batch size), so its ratio also carries the batches' length differences.

Whole runs, wall-clock (what a user waits for): each library's trainer constructed (tokenisation
of the pairs and, with precomputed reference log-probs, the precompute pass — both libraries do it
in the constructor) and ``train()`` run to the end, timed with a wall clock, on ``--threads``
torch threads (default: every CPU of the machine), for a short run (``--short-steps``, 15) and a
long one (``--long-steps``, 200) of the tiny model at fp32, bf16 and bf16 + precomputed; with
``--smol-wall``, also SmolLM2 LoRA bf16 (``--short-steps``). Imports and building the model and
data (the same for both) happen before the clock starts. Each run is its own subprocess; rounds
alternate the libraries; reported: seconds, median (min–max) over rounds, and the median
(min–max) of the per-round ratio TRL time / ours. Wall-clock is what a shared machine inflates:
the machine line carries the load average.

At the end the script prints both kinds of figure as markdown tables, each with its machine line
(CPU model, bf16 and AMX support, thread count), ready for the README.

    python bench/trainer.py [--steps 8] [--warmup 2] [--rounds 3] [--smol-steps 3]
        [--smol-rounds 3] [--overhead-rounds 30] [--models tiny,smollm2]
        [--settings defaults,fp32,...] [--threads N] [--short-steps 15] [--long-steps 200]
        [--wall-rounds 2] [--smol-wall] [--quick]

``--rounds 0`` skips the per-step section, ``--wall-rounds 0`` the wall-clock one,
``--overhead-rounds 0`` the MixDPO overhead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

from machine import machine

MAX_LENGTH = 128
BATCH = {"tiny": 16, "smollm2": 4}
#: setting -> (bf16, precompute_ref_log_probs); "defaults" leaves both libraries' own defaults.
MATCHED = {"fp32": (False, False), "bf16": (True, False), "bf16+precomputed": (True, True)}
SETTINGS = ("defaults", *MATCHED)
PAPER = "bf16, float32 reference"  # ours only
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


# ------------------------------------------------------------------ models and data
def _pairs(count: int | None = None, annotators: bool = False):
    from pluralign.data.synthetic import PopulationConfig, make_population

    pop = make_population(PopulationConfig(n_annotators=40, pairs_per_annotator=16, n_prompts=64,
                                           seed=0))
    ds = pop.dataset.select_columns(["prompt", "chosen", "rejected"]
                                    + (["annotator_id"] if annotators else []))
    return ds if count is None else ds.select(range(count))


def _model_data(model_name: str, pairs: int | None):
    """(dataset, policy, tokenizer, lora) for one model; ``lora``: the policy is a peft model."""
    if model_name == "tiny":
        from pluralign.training import build_tokenizer, tiny_gpt_neox

        ds = _pairs(pairs)
        tokenizer = build_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in _pairs()],
                                    2048)
        model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=256, num_hidden_layers=4,
                              num_attention_heads=4, intermediate_size=1024)
        return ds, model, tokenizer, False
    import peft

    from pluralign.training import load_causal_lm, load_tokenizer

    model = load_causal_lm("smollm2-135m-instruct")
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM"))
    return _pairs(pairs), model, load_tokenizer("smollm2-135m-instruct"), True


def _common(model_name: str, steps: int, out: str, bf16: bool | None) -> dict:
    common = dict(output_dir=out, per_device_train_batch_size=BATCH[model_name],
                  per_device_eval_batch_size=BATCH[model_name], max_steps=steps,
                  logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
                  disable_tqdm=True, seed=0, dataloader_num_workers=0,
                  optim="adamw_torch_fused", learning_rate=1e-6)
    if bf16 is not None:
        common.update(bf16=bf16, gradient_checkpointing=False)
    return common


def _ours(model_name: str, setting: str, steps: int, out: str, data: tuple, **kw):
    """pluralign's trainer on ``data`` (:func:`_model_data`'s tuple)."""
    from pluralign.training import PreferenceConfig, PreferenceTrainer

    ds, model, tokenizer, _ = data
    if kw.get("strength_unit") == "annotator":  # panel MixDPO reads who labelled each pair
        ds = _pairs(len(ds), annotators=True)
    bf16, precompute = MATCHED.get(setting, (None, False)) if setting != PAPER else (True, False)
    if setting == PAPER:
        kw["reference_dtype"] = "float32"
    args = PreferenceConfig(max_length=MAX_LENGTH, max_prompt_length=64,
                            precompute_ref_log_probs=precompute,
                            **_common(model_name, steps, out, bf16), **kw)
    return PreferenceTrainer(model, args=args, train_dataset=ds, processing_class=tokenizer)


def _trl(model_name: str, setting: str, steps: int, out: str, data: tuple):
    """TRL's DPOTrainer on ``data`` (:func:`_model_data`'s tuple)."""
    import trl

    ds, model, tokenizer, lora = data
    bf16, precompute = MATCHED.get(setting, (None, False))
    args = trl.DPOConfig(max_length=MAX_LENGTH, precompute_ref_log_probs=precompute,
                         **_common(model_name, steps, out, bf16))
    ref = None if lora or precompute else copy.deepcopy(model)
    return trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds,
                          processing_class=tokenizer)


# ------------------------------------------------------------------ workers (subprocesses)
def train_worker(lib: str, model_name: str, setting: str, steps: int, warmup: int) -> dict:
    """Train one (library, setting) for warmup + steps steps; median CPU step time."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="bench_trainer_")
    pairs = (warmup + steps) * BATCH[model_name] if model_name == "smollm2" else None
    build = _ours if lib == "ours" else _trl
    start = time.process_time()
    trainer = build(model_name, setting, warmup + steps, out, _model_data(model_name, pairs))
    setup = time.process_time() - start
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.process_time()

        def on_step_end(self, *a, **k):
            times.append(time.process_time() - self.start)

    trainer.add_callback(Timer())
    trainer.train()
    step = statistics.median(times[warmup:])
    return {"step_s": step, "pairs_per_s": BATCH[model_name] / step, "setup_cpu_s": setup}


def _unique_rows(examples: list[dict]) -> Iterable:
    """Each pair's prompt + chosen + rejected, concatenated and cut into rows as wide as the
    longest pair (the last row shorter): ``([rows, W] ids, [rows, W] bool: the token is a
    completion token)``, and, if any tokens are left, the same for ``[1, rest]``."""
    import torch

    ids, completion = [], []
    for x in examples:
        ids += [*x["prompt_ids"], *x["chosen_ids"], *x["rejected_ids"]]
        completion += [False] * len(x["prompt_ids"]) + [True] * (
            len(x["chosen_ids"]) + len(x["rejected_ids"]))
    width = max(len(x["prompt_ids"]) + len(x["chosen_ids"]) + len(x["rejected_ids"])
                for x in examples)
    flat, marks = torch.tensor(ids, dtype=torch.long), torch.tensor(completion)
    full = flat.numel() // width * width
    if full:
        yield flat[:full].view(-1, width), marks[:full].view(-1, width)
    if flat.numel() > full:
        yield flat[full:][None], marks[full:][None]


def floor_worker(model_name: str, bf16: bool, steps: int, warmup: int) -> dict:
    """The compute floor (module docstring) over the batches pluralign's run draws."""
    import torch
    import torch.nn.functional as F

    from pluralign.training.trainer import disabled_adapters

    torch.set_num_threads(1)
    pairs = (warmup + steps) * BATCH[model_name] if model_name == "smollm2" else None
    trainer = _ours(model_name, "bf16" if bf16 else "fp32", warmup + steps,
                    tempfile.mkdtemp(prefix="bench_floor_"), _model_data(model_name, pairs))
    trainer.data_collator = list  # the raw tokenised pairs, in the run's order
    model = trainer.model.train()
    reference = trainer.ref_model
    lora = reference is None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def loss_of(net, ids, completion):
        base = net.get_base_model() if lora else net
        hidden = base.base_model(input_ids=ids, use_cache=False).last_hidden_state
        scored = completion[:, 1:]  # the states that predict a completion token
        logits = base.get_output_embeddings()(hidden[:, :-1][scored])
        return F.cross_entropy(logits.float(), ids[:, 1:][scored])

    times = []
    for i, examples in enumerate(trainer.get_train_dataloader()):
        if i == warmup + steps:
            break
        start = time.process_time()
        for ids, completion in _unique_rows(examples):
            with autocast:
                loss_of(model, ids, completion).backward()
            with torch.inference_mode(), autocast:
                if lora:
                    with disabled_adapters(model):
                        loss_of(model, ids, completion)
                else:
                    loss_of(reference, ids, completion)
        model.zero_grad(set_to_none=True)
        times.append(time.process_time() - start)
    step = statistics.median(times[warmup:])
    return {"step_s": step, "pairs_per_s": BATCH[model_name] / step}


def overhead_worker(rounds: int) -> dict:
    """MixDPO step time relative to DPO (module docstring); per-round ratios."""
    import torch

    torch.set_num_threads(1)
    trainers = {}
    for name, kw in (("dpo", {}), ("gamma", {"objective": "mixdpo", "strength": "gamma"}),
                     ("lognormal", {"objective": "mixdpo", "strength": "lognormal"}),
                     ("panel-gamma", {"objective": "mixdpo", "strength": "gamma",
                                      "strength_unit": "annotator"})):
        trainer = _ours("tiny", "fp32", 1, tempfile.mkdtemp(prefix="bench_overhead_"),
                        _model_data("tiny", None), **kw)
        trainer.create_optimizer()
        trainers[name] = trainer
    # the panel objective's batches hold whole annotators (16 pairs each here: the same size)
    batches = {name: list(iter(trainers["panel-gamma" if name == "panel-gamma" else "dpo"]
                               .get_train_dataloader())) for name in trainers}
    times: dict[str, list[float]] = {name: [] for name in trainers}
    order = list(trainers)
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:
            trainer = trainers[name]
            batch = batches[name][r % len(batches[name])]
            start = time.process_time()
            trainer.model.train()
            trainer.compute_loss(trainer.model, dict(batch)).backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.objective.zero_grad(set_to_none=True)
            times[name].append(time.process_time() - start)
    skip = min(3, rounds - 1)  # warm-up rounds
    return {name: [t / d for t, d in zip(times[name][skip:], times["dpo"][skip:], strict=True)]
            for name in ("gamma", "lognormal", "panel-gamma")} | {"dpo_step_s": times["dpo"][skip:]}


def wall_worker(lib: str, model_name: str, setting: str, steps: int, threads: int) -> dict:
    """Wall-clock of one whole run on ``threads`` torch threads: the trainer's construction
    (tokenisation, the precompute pass) plus ``train()``. Both libraries are imported and the
    model and data built (the same for both) before the clock starts."""
    import torch
    import trl  # noqa: F401  (imported before the clock, like pluralign by _model_data)

    torch.set_num_threads(threads)
    pairs = steps * BATCH[model_name] if model_name == "smollm2" else None
    data = _model_data(model_name, pairs)
    build = _ours if lib == "ours" else _trl
    out = tempfile.mkdtemp(prefix="bench_wall_")
    start, cpu = time.perf_counter(), time.process_time()
    trainer = build(model_name, setting, steps, out, data)
    built = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    return {"wall_s": end - start, "init_s": built - start, "cpu_s": time.process_time() - cpu}


WORKERS: dict[str, Callable[..., dict]] = {"train": train_worker, "floor": floor_worker,
                                           "overhead": overhead_worker, "wall": wall_worker}


def _run(kind: str, *args: object, threads: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps([kind, *args])],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ report
def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}–{fmt.format(max(values))})")


def bench_model(model_name: str, steps: int, warmup: int, rounds: int,
                settings: tuple[str, ...] = (*SETTINGS, PAPER)) -> list[str]:
    """The given settings of one model, alternating the libraries round by round; then the
    floor (of the matched fp32/bf16 settings among them). Returns the summary's markdown rows."""
    rate: dict[tuple[str, str], list[float]] = {}
    compared = [s for s in SETTINGS if s in settings]
    floors = [(name, MATCHED[name][0]) for name in ("fp32", "bf16") if name in settings]
    for r in range(rounds):
        libs = ("ours", "trl") if r % 2 == 0 else ("trl", "ours")
        runs = [(s, lib) for s in compared for lib in libs]
        for setting, lib in runs + ([(PAPER, "ours")] if PAPER in settings else []):
            result = _run("train", lib, model_name, setting, steps, warmup)
            rate.setdefault((lib, setting), []).append(result["pairs_per_s"])
            print(f"  round {r + 1} {model_name:8s} {setting:24s} {lib:5s} "
                  f"{result['pairs_per_s']:7.2f} pairs/s (setup {result['setup_cpu_s']:.1f} s "
                  "CPU)", flush=True)
        for name, bf16 in floors:
            result = _run("floor", model_name, bf16, steps, warmup)
            rate.setdefault(("floor", name), []).append(result["pairs_per_s"])
            print(f"  round {r + 1} {model_name:8s} {'compute floor, ' + name:24s} "
                  f"{result['pairs_per_s']:13.2f} pairs/s", flush=True)
    batch = BATCH[model_name]
    print(f"\n{model_name}: batch {batch}, max_length {MAX_LENGTH}, {rounds} rounds of {steps} "
          f"steps (+{warmup} warm-up), pairs/s median (min–max) over rounds")
    print(f"{'setting':26s} {'TRL DPOTrainer':>20s} {'pluralign':>20s} {'ours / TRL':>20s}")
    rows = []
    for setting in compared:
        ours, trl = rate[("ours", setting)], rate[("trl", setting)]
        ratios = [o / t for o, t in zip(ours, trl, strict=True)]
        print(f"{setting:26s} {_spread(trl):>20s} {_spread(ours):>20s} "
              f"{_spread(ratios, '{:.2f}x'):>20s}")
        rows.append(f"| {model_name}, {setting} | {_spread(trl)} | {_spread(ours)} | "
                    f"{_spread(ratios, '{:.2f}×')} |")
    if PAPER in settings:
        print(f"{PAPER:26s} {'—':>20s} {_spread(rate[('ours', PAPER)]):>20s}")
    for name, _ in floors:
        floor, ours, trl = rate[("floor", name)], rate[("ours", name)], rate[("trl", name)]
        ratios = [f / o for f, o in zip(floor, ours, strict=True)]
        ceiling = [f / t for f, t in zip(floor, trl, strict=True)]
        print(f"compute floor, {name}: {_spread(floor, '{:.2f}')} pairs/s; pluralign {name} "
              f"step / floor: {_spread(ratios, '{:.2f}')}; floor / TRL (about the most an "
              f"exact method can gain): {_spread(ceiling, '{:.2f}x')}")
    print(flush=True)
    return rows


def bench_wall(model_name: str, runs: list[tuple[str, int]], rounds: int,
               threads: int) -> list[str]:
    """Wall-clock of whole runs (:func:`wall_worker`) of each ``(setting, steps)`` in ``runs``,
    alternating the libraries round by round. Returns the summary's markdown rows."""
    wall: dict[tuple[str, str, int], list[float]] = {}
    for r in range(rounds):
        libs = ("ours", "trl") if r % 2 == 0 else ("trl", "ours")
        for setting, steps in runs:
            for lib in libs:
                result = _run("wall", lib, model_name, setting, steps, threads, threads=threads)
                wall.setdefault((lib, setting, steps), []).append(result["wall_s"])
                print(f"  round {r + 1} {model_name:8s} {setting:18s} {steps:4d} steps {lib:5s} "
                      f"{result['wall_s']:7.1f} s wall (construction {result['init_s']:.1f} s, "
                      f"{result['cpu_s']:.1f} s CPU)", flush=True)
    print(f"\n{model_name}: wall-clock of construction + train() on {threads} threads, seconds, "
          f"median (min–max) over {rounds} rounds; ours / TRL = TRL's time / ours")
    print(f"{'setting':18s} {'steps':>5s} {'TRL DPOTrainer':>20s} {'pluralign':>20s} "
          f"{'ours / TRL':>20s}")
    rows = []
    for setting, steps in runs:
        ours, trl = wall[("ours", setting, steps)], wall[("trl", setting, steps)]
        ratios = [t / o for o, t in zip(ours, trl, strict=True)]
        print(f"{setting:18s} {steps:5d} {_spread(trl, '{:.1f}'):>20s} "
              f"{_spread(ours, '{:.1f}'):>20s} {_spread(ratios, '{:.2f}x'):>20s}")
        rows.append(f"| {model_name}, {setting} | {steps} | {_spread(trl, '{:.1f}')} s | "
                    f"{_spread(ours, '{:.1f}')} s | {_spread(ratios, '{:.2f}×')} |")
    print(flush=True)
    return rows


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (tiny)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds (tiny; < 1: skip the per-step section)")
    parser.add_argument("--smol-steps", type=int, default=3, help="timed steps per run (SmolLM2)")
    parser.add_argument("--smol-rounds", type=int, default=3, help="rounds (SmolLM2)")
    parser.add_argument("--overhead-rounds", type=int, default=30,
                        help="MixDPO overhead rounds (< 2: skip)")
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny,smollm2")
    parser.add_argument("--settings", default=",".join((*SETTINGS, "paper")),
                        help=f"comma-separated subset of: {', '.join(SETTINGS)}, paper ({PAPER})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the wall-clock runs (default: every CPU)")
    parser.add_argument("--short-steps", type=int, default=15,
                        help="steps of the short wall-clock run (< 1: skip)")
    parser.add_argument("--long-steps", type=int, default=200,
                        help="steps of the long wall-clock run (< 1: skip; e.g. 40 to check "
                             "quickly)")
    parser.add_argument("--wall-rounds", type=int, default=2,
                        help="alternating rounds of the wall-clock runs (< 1: skip them)")
    parser.add_argument("--smol-wall", action="store_true",
                        help="also SmolLM2 LoRA bf16 wall-clock (--short-steps steps) when "
                             "smollm2 is in --models")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny model only, 1 round of 1 step, 4 overhead rounds, "
                             "1 wall-clock round of 2 and 4 steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        kind, *args = json.loads(a.worker)
        print(json.dumps(WORKERS[kind](*args)))
        return
    if a.quick:
        a.steps, a.warmup, a.rounds, a.overhead_rounds, a.models = 1, 1, 1, 4, "tiny"
        a.short_steps, a.long_steps, a.wall_rounds = 2, 4, 1
    settings = tuple(PAPER if s == "paper" else s for s in a.settings.split(","))
    unknown = sorted(set(settings) - {*SETTINGS, PAPER})
    if unknown:
        parser.error(f"unknown settings {unknown}; use a subset of {', '.join(SETTINGS)}, paper")
    models = a.models.split(",")
    print(f"command: python bench/trainer.py {' '.join(sys.argv[1:])}")
    print(f"machine: {machine()}; load average {_load()} (1/5/15 min)", flush=True)
    step_rows: list[str] = []
    for model_name in models if a.rounds >= 1 else ():
        if model_name == "smollm2":
            step_rows += bench_model(model_name, a.smol_steps, 1, a.smol_rounds, settings)
        else:
            step_rows += bench_model(model_name, a.steps, a.warmup, a.rounds, settings)
    wall_rows: list[str] = []
    lengths = [n for n in (a.short_steps, a.long_steps) if n >= 1]
    if a.wall_rounds >= 1 and "tiny" in models and lengths:
        wall_rows += bench_wall("tiny", [(s, n) for n in lengths for s in MATCHED],
                                a.wall_rounds, a.threads)
    if a.wall_rounds >= 1 and a.smol_wall and "smollm2" in models and a.short_steps >= 1:
        wall_rows += bench_wall("smollm2", [("bf16", a.short_steps)], a.wall_rounds, a.threads)
    print("README tables (markdown):\n")
    if step_rows:
        print(f"Per training step, CPU time on 1 thread after warm-up, median (min–max) over "
              f"rounds; machine: {machine(1)}; load average {_load()}\n")
        print("| model, setting | TRL pairs/s | pluralign pairs/s | ours / TRL |")
        print("|---|---|---|---|")
        print("\n".join(step_rows) + "\n")
    if wall_rows:
        print(f"Whole run, wall-clock of the trainer's construction (tokenisation, precompute "
              f"pass) + `train()`, median (min–max) over {a.wall_rounds} rounds; machine: "
              f"{machine(a.threads)}; load average {_load()}\n")
        print("| model, setting | steps | TRL | pluralign | ours / TRL (speed) |")
        print("|---|---|---|---|---|")
        print("\n".join(wall_rows) + "\n", flush=True)
    if a.overhead_rounds < 2:
        return
    over = _run("overhead", a.overhead_rounds)
    print(f"MixDPO step-time overhead vs DPO in PreferenceTrainer (tiny, float32, interleaved in "
          f"one process, {len(over['gamma'])} rounds, DPO step "
          f"{statistics.median(over['dpo_step_s']) * 1e3:.0f} ms): median (min–max) of per-round "
          "ratios")
    for family in ("gamma", "lognormal", "panel-gamma"):
        print(f"  MixDPO-{family}: {_spread(over[family], '{:.3f}x')}")
    print("  (panel-gamma: strength_unit=annotator, one beta per annotator, batches of whole "
          "annotators)")


if __name__ == "__main__":
    main()
