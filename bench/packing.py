"""Padded vs shared-prompt vs padding-free batches: fwd+bwd time of the policy's log-probs (CPU).

The model is the issue-13 bench's tiny GPT-NeoX (hidden 256, 4 layers, BPE vocabulary ~2k), the
pairs the synthetic population of bench/trainer.py tokenised with max_length 128 and
max_prompt_length 64, in batches of 16 pairs. For each batch, every layout computes the summed
completion log-probs (the completion-only head) and backpropagates their sum; layouts run in
rotating order within each round, on the same batches. Reported per layout: the median step
time (CPU time of this process, one torch thread: wall time is inflated by other jobs on a
shared machine), the median over rounds of the per-round time ratio to the padded layout, and
the tokens fed to the model; also the unique tokens (prompt once, no padding) and the largest
log-prob difference to the padded layout.

    python bench/packing.py [--batches 4] [--rounds 3] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

from machine import machine

LAYOUTS = {  # name -> (share_prompt, padding_free); None: PreferenceCollator's padded rows
    "padded": None,
    "shared_prompt": (True, False),
    "padding_free": (False, True),
    "shared+padding_free": (True, True),
}
BATCH = 16


def _batches(count: int):
    from pluralign.data.synthetic import PopulationConfig, make_population
    from pluralign.training import build_tokenizer, tiny_gpt_neox, tokenize_pair

    pop = make_population(PopulationConfig(n_annotators=40, pairs_per_annotator=16, n_prompts=64,
                                           seed=0))
    ds = pop.dataset.select_columns(["prompt", "chosen", "rejected"]).shuffle(seed=0)
    tokenizer = build_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in ds], 2048)
    model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=256, num_hidden_layers=4,
                          num_attention_heads=4, intermediate_size=1024)
    pairs = [tokenize_pair(ds[i], tokenizer, 128, 64) for i in range(count * BATCH)]
    return [pairs[i:i + BATCH] for i in range(0, len(pairs), BATCH)], model, tokenizer.pad_token_id


def _collate(pairs, pad_id):
    from pluralign.training.packing import pack_pairs
    from pluralign.training.tokenization import PreferenceCollator

    out = {}
    for name, layout in LAYOUTS.items():
        out[name] = (PreferenceCollator(pad_id)(pairs) if layout is None
                     else pack_pairs(pairs, pad_id, *layout))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="run under bfloat16 autocast")
    args = parser.parse_args()

    import torch

    from pluralign.training.packing import batch_sequence_logps

    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    batches, model, pad_id = _batches(args.batches)
    model.train()
    collated = [_collate(pairs, pad_id) for pairs in batches]
    unique = sum(len(x["prompt_ids"]) + len(x["chosen_ids"]) + len(x["rejected_ids"])
                 for pairs in batches for x in pairs)
    fed = {name: sum(c[name]["input_ids"].numel() for c in collated) for name in LAYOUTS}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def step(batch):
        with autocast:
            logps = batch_sequence_logps(model, batch)
        logps.sum().backward()
        model.zero_grad(set_to_none=True)
        return logps.detach()

    diffs = {name: 0.0 for name in LAYOUTS}
    for c in collated:  # warm-up, and the exactness check
        reference = step(c["padded"])
        for name in LAYOUTS:
            diffs[name] = max(diffs[name], (step(c[name]) - reference).abs().max().item())
    times = {name: [] for name in LAYOUTS}
    ratios = {name: [] for name in LAYOUTS}
    names = list(LAYOUTS)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        total = dict.fromkeys(LAYOUTS, 0.0)
        for c in collated:
            for name in order:
                start = time.process_time()
                step(c[name])
                elapsed = time.process_time() - start
                times[name].append(elapsed)
                total[name] += elapsed
        for name in LAYOUTS:
            ratios[name].append(total[name] / total["padded"])
    print(f"tiny GPT-NeoX hidden 256, 4 layers; {args.batches} batches of {BATCH} pairs, "
          f"max_length 128; {args.rounds} rounds; {'bf16 autocast' if args.bf16 else 'float32'}; "
          "fwd+bwd of the summed completion log-probs, CPU time, 1 thread")
    print(f"unique tokens (prompt once, no padding): {unique}; padded tokens: {fed['padded']} "
          f"(unique/padded = {unique / fed['padded']:.2f})")
    print(f"{'layout':<22}{'tokens fed':>11}{'median step s':>15}{'time / padded':>15}"
          f"{'pairs/s':>9}{'max |Δ logp|':>14}")
    for name in LAYOUTS:
        median = statistics.median(times[name])
        print(f"{name:<22}{fed[name]:>11}{median:>15.4f}{statistics.median(ratios[name]):>15.3f}"
              f"{BATCH / median:>9.1f}{diffs[name]:>14.2e}")


if __name__ == "__main__":
    main()
