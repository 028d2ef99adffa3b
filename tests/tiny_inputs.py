"""Shared inputs of the CLI tests: a saved population and a tiny model folder."""


def save_tiny_population_and_model(root):
    """Save a 6-annotator compact population to ``root/pop`` and a tiny GPT-NeoX with a tokenizer
    fitted on its texts to ``root/model``; returns the population."""
    from pluralign.data.synthetic import PopulationConfig, make_population
    from pluralign.training.models import build_tokenizer, tiny_gpt_neox

    population = make_population(PopulationConfig(n_annotators=6, pairs_per_annotator=3,
                                                  n_prompts=5, text_style="compact", seed=0))
    population.save(root / "pop")
    texts = list(population.dataset["prompt"]) + list(population.dataset["chosen"])
    tokenizer = build_tokenizer(texts, vocab_size=300)
    tiny_gpt_neox(len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return population


def two_type_population_and_tokenizer(pairs_per_annotator: int):
    """(dataset, tokenizer) of a 6-annotator, two-type compact population without demographic
    signal, and a tokenizer fitted on its texts (vocabulary 300)."""
    from pluralign.data.synthetic import make_population
    from pluralign.training.models import build_tokenizer

    pop = make_population(n_annotators=6, pairs_per_annotator=pairs_per_annotator, n_prompts=8,
                          n_types=2, demographic_signal=0.0, text_style="compact")
    tokenizer = build_tokenizer([t for c in ("prompt", "chosen", "rejected")
                                 for t in pop.dataset[c]], 300)
    return pop.dataset, tokenizer
