"""Bradley–Terry, PAL, relabeling and the adjusted Rand index, on synthetic embeddings."""

import itertools
import math

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pluralign.errors import ConfigError
from pluralign.reward import (
    BradleyTerryConfig,
    BradleyTerryRewardModel,
    PairEmbeddings,
    PALConfig,
    PALRewardModel,
    UnknownUserError,
    adjusted_rand_index,
    relabel_with_average_reward,
)
from pluralign.reward.base import CheckpointError, bradley_terry_loss, pairwise_accuracy

D, K = 12, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def typed_population(n_users=30, pairs_per_user=60, seed=0, n_types=K):
    """Users of n_types opposed linear types over random item embeddings (no text)."""
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(200, D)).astype(np.float32)
    directions = np.linalg.qr(rng.normal(size=(D, D)))[0][:n_types] * 4.0  # orthogonal types
    user_type = np.arange(n_users) % n_types
    rows = []
    for u in range(n_users):
        for _ in range(pairs_per_user):
            a, b = rng.choice(200, 2, replace=False)
            diff = (items[a] - items[b]) @ directions[user_type[u]]
            win = rng.random() < 1 / (1 + math.exp(-diff))
            rows.append((f"u{u:02d}", a, b) if win else (f"u{u:02d}", b, a))
    prompt = torch.zeros(len(rows), D)
    pairs = PairEmbeddings(prompt, torch.from_numpy(items[[r[1] for r in rows]]),
                           torch.from_numpy(items[[r[2] for r in rows]]))
    ds = datasets.Dataset.from_dict({
        "prompt": ["p"] * len(rows), "chosen": [f"i{r[1]}" for r in rows],
        "rejected": [f"i{r[2]}" for r in rows], "annotator_id": [r[0] for r in rows]})
    return ds, pairs, user_type


# ----------------------------------------------------------------------------------------- ARI
def pair_counting_ari(a, b):
    """Reference: ARI from the four pair counts (same/same, same/diff, diff/same, diff/diff)."""
    ss = sd = ds_ = dd = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        same_a, same_b = a[i] == a[j], b[i] == b[j]
        ss += same_a and same_b
        sd += same_a and not same_b
        ds_ += (not same_a) and same_b
        dd += (not same_a) and not same_b
    denominator = (ss + sd) * (sd + dd) + (ss + ds_) * (ds_ + dd)
    return 1.0 if denominator == 0 else 2.0 * (ss * dd - sd * ds_) / denominator


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=2, max_size=25))
def test_ari_matches_pair_counting(labels):
    a, b = [x for x, _ in labels], [y for _, y in labels]
    assert adjusted_rand_index(a, b) == pytest.approx(pair_counting_ari(a, b), abs=1e-12)


def test_ari_known_values():
    assert adjusted_rand_index([0, 0, 1, 1], ["x", "x", "y", "y"]) == 1.0  # relabeling
    # Hubert & Arabie worked example value computed by hand from the pair counts:
    # a=[0,0,0,1,1,1], b=[0,0,1,1,2,2]: ss=2, sd=4, ds=1, dd=8 -> 2(16-4)/(6*12+3*9) = 24/99
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(24 / 99)


# ---------------------------------------------------------------------------------- basics
def test_bradley_terry_loss_and_accuracy_against_closed_forms():
    m = torch.tensor([-800.0, -3.0, 0.0, 2.5, 800.0], dtype=torch.float64)
    reference = np.logaddexp(0.0, -m.numpy())
    np.testing.assert_allclose(bradley_terry_loss(m).numpy(), reference, rtol=1e-15)
    assert pairwise_accuracy(torch.tensor([1.0, -1.0, 0.0, 2.0])) == 0.625


def test_bradley_terry_learns_and_round_trips(tmp_path):
    ds, pairs, user_type = typed_population(n_types=1, n_users=10)
    model = BradleyTerryRewardModel(D, BradleyTerryConfig(epochs=30, show_progress=False))
    model.fit(pairs.subset(range(0, 500)))
    accuracy = model.accuracy(pairs.subset(range(500, 600)))
    assert accuracy > 0.8
    model.save_pretrained(tmp_path / "bt")
    loaded = BradleyTerryRewardModel.from_pretrained(tmp_path / "bt")
    assert loaded.accuracy(pairs.subset(range(500, 600))) == accuracy
    with pytest.raises(CheckpointError, match="not a 'PALRewardModel'"):
        PALRewardModel.from_pretrained(tmp_path / "bt")


# ------------------------------------------------------------------------------------- PAL
@pytest.fixture(scope="module")
def trained_pal():
    torch.set_num_threads(1)
    ds, pairs, user_type = typed_population()
    model = PALRewardModel(D, PALConfig(n_prototypes=K, epochs=30, batch_size=64,
                                        show_progress=False))
    train = [i for i in range(len(ds)) if i % 60 < 45]
    model.fit(ds.select(train), pairs.subset(train))
    return model, ds, pairs, user_type


def test_pal_recovers_types_and_generalises(trained_pal):
    model, ds, pairs, user_type = trained_pal
    groups = model.user_groups()
    assert adjusted_rand_index(user_type, [groups[f"u{u:02d}"] for u in range(30)]) == 1.0
    test = [i for i in range(len(ds)) if i % 60 >= 45]
    assert model.accuracy(ds.select(test), pairs.subset(test)) > 0.8


@pytest.mark.parametrize("variant,similarity", [("A", "cosine"), ("B", "cosine"),
                                                ("B", "inner")])
def test_pal_reward_formulas(variant, similarity):
    cfg = PALConfig(variant=variant, similarity=similarity, n_prototypes=K, pref_dim=5,
                    hidden_dim=0, show_progress=False)
    model = PALRewardModel(D, cfg, user_ids=["a", "b"]).double()
    with torch.no_grad():
        model.log_scale.fill_(math.log(7.0))
    x, y = torch.randn(4, D, dtype=torch.float64), torch.randn(4, D, dtype=torch.float64)
    w = F.softmax(torch.randn(4, K, dtype=torch.float64), -1)
    got = model.rewards(x, y, w).detach().numpy()
    lin = model.projector
    z = (torch.cat([x, y], -1) @ lin.weight.T + lin.bias).detach().numpy()
    if variant == "A":
        ideal = (w @ model.prototypes).detach().numpy()
        expected = -7.0 * np.linalg.norm(z - ideal, axis=1)
    else:
        protos = np.stack([(x @ g.weight.T + g.bias).detach().numpy()
                           for g in model.prompt_prototypes], 1)
        ideal = np.einsum("bk,bkd->bd", w.numpy(), protos)
        dot = (z * ideal).sum(1)
        if similarity == "cosine":
            dot = dot / np.linalg.norm(z, axis=1) / np.linalg.norm(ideal, axis=1)
        expected = 7.0 * dot
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_scale_is_clamped_at_100():
    model = PALRewardModel(D, PALConfig(variant="B", show_progress=False))
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert model.scale().item() == 100.0


def test_unknown_users_error_or_explicit_population_average(trained_pal):
    model, ds, pairs, _ = trained_pal
    with pytest.raises(UnknownUserError, match="adapt"):
        model.mixture_weights(["u00", "stranger"])
    weights = model.mixture_weights(["stranger", "u01"], unknown="average")
    every = torch.stack([F.softmax(model.user_logits[i], -1) for i in range(30)])
    torch.testing.assert_close(weights[0], every.mean(0).detach())
    torch.testing.assert_close(weights[1], every[1].detach())
    with pytest.raises(ConfigError):
        model.mixture_weights(["u00"], unknown="zero")


def test_adapt_trains_only_the_new_users_logits(trained_pal):
    model, ds, pairs, user_type = trained_pal
    new = datasets.Dataset.from_dict({"annotator_id": [f"new{u}" for u in ds["annotator_id"]],
                                      "prompt": ds["prompt"], "chosen": ds["chosen"],
                                      "rejected": ds["rejected"]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = model.clone()
    adapted.adapt(new, n=20, pairs=pairs)
    for name, value in adapted.state_dict().items():
        if name == "user_logits":
            torch.testing.assert_close(value[:30], before[name])
        else:
            torch.testing.assert_close(value, before[name])
    groups = adapted.user_groups()
    assert adjusted_rand_index(user_type, [groups[f"newu{u:02d}"] for u in range(30)]) == 1.0
    with pytest.raises(ConfigError, match="already in the model"):
        adapted.adapt(new, n=5, pairs=pairs)
    assert adapted.parameter_counts()["users"] == 60 and len(model.user_ids) == 30


def test_adapting_users_together_equals_one_at_a_time(trained_pal):
    model, ds, pairs, _ = trained_pal
    rows = [i for i, u in enumerate(ds["annotator_id"]) if u in ("u03", "u04")][:80]
    sub = ds.select(rows)
    together = model.clone(PALConfig(**{**model.config.__dict__, "adapt_batch_size": 0}))
    renamed = sub.map(lambda r: {"annotator_id": "n" + r["annotator_id"]})
    together.adapt(renamed, pairs=pairs.subset(rows))
    for user in ("u03", "u04"):
        alone = model.clone(together.config)
        mine = [i for i, u in enumerate(sub["annotator_id"]) if u == user]
        alone.adapt(renamed.select(mine), pairs=pairs.subset([rows[i] for i in mine]))
        torch.testing.assert_close(alone.user_logits[-1], together.user_logits[
            together.user_ids.index("n" + user)], rtol=1e-4, atol=1e-5)


def test_pal_save_load_and_parameter_counts(trained_pal, tmp_path):
    model, ds, pairs, _ = trained_pal
    model.save_pretrained(tmp_path / "pal")
    loaded = PALRewardModel.from_pretrained(tmp_path / "pal")
    assert loaded.user_ids == model.user_ids
    torch.testing.assert_close(loaded.pair_margins(ds, pairs), model.pair_margins(ds, pairs))
    h, d = model.config.hidden_dim, model.config.pref_dim
    shared = (2 * D * h + h) + (h * d + d) + K * d + 1  # projector, prototypes, log-scale
    assert model.parameter_counts() == {"shared": shared, "per_user": K, "users": 30,
                                        "total": shared + 30 * K}


def test_pal_needs_annotators():
    ds = datasets.Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"],
                                     "annotator_id": [None]})
    model = PALRewardModel(D, PALConfig(show_progress=False))
    with pytest.raises(ConfigError, match="row 0: annotator_id is empty"):
        model.fit(ds, PairEmbeddings(*(torch.zeros(1, D) for _ in range(3))))


# --------------------------------------------------------------------------------- relabel
class LengthReward:
    """Reward = sign · len(response)."""

    def __init__(self, sign):
        self.sign = sign

    def score(self, prompts, responses):
        return np.array([self.sign * len(r) for r in responses], dtype=float)


def test_relabel_swaps_where_the_weighted_average_disagrees():
    ds = datasets.Dataset.from_dict({
        "prompt": ["p", "p", "p"], "chosen": ["aaaa", "a", "aa"], "rejected": ["a", "aaaa", "aa"],
        "chosen_id": [1, 2, 3], "rejected_id": [4, 5, 6], "true_margin": [0.5, -1.0, 2.0]})
    models = {"long": LengthReward(+1), "short": LengthReward(-1)}
    out = relabel_with_average_reward(ds, models, {"long": 0.7, "short": 0.3})
    # average margin = 0.4 * (len c - len r): pair 0 keeps, pair 1 flips, pair 2 is a tie
    assert out["relabeled"] == [False, True, False]
    assert out["chosen"] == ["aaaa", "aaaa", "aa"] and out["rejected"] == ["a", "a", "aa"]
    assert out["chosen_id"] == [1, 5, 3] and out["rejected_id"] == [4, 2, 6]
    assert out["true_margin"] == [0.5, 1.0, 2.0]
    np.testing.assert_allclose(out["average_reward_margin"], [1.2, 1.2, 0.0])
    flipped = relabel_with_average_reward(ds, models, {"long": 0.2, "short": 0.8})
    assert flipped["relabeled"] == [True, False, False]


def test_relabel_validates_type_probabilities():
    ds = datasets.Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]})
    models = {"0": LengthReward(1), "1": LengthReward(-1)}
    with pytest.raises(ConfigError, match="sum to 1"):
        relabel_with_average_reward(ds, models, {"0": 0.5, "1": 0.6})
    with pytest.raises(ConfigError, match="one probability per model"):
        relabel_with_average_reward(ds, models, {"0": 1.0})
