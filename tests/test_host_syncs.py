"""No host synchronisation in an objective's forward/backward inside numerics.sync_free (issue 13
item 5): every way a tensor's value reaches Python (item, float, int, bool, tolist) is made to
raise while the loss runs."""

import contextlib

import datasets
import pytest
import torch

from pluralign.numerics import DEBUG_ENV, NumericsError, sync_free
from pluralign.objectives import build_objective
from pluralign.training import PreferenceConfig, PreferenceTrainer, build_tokenizer, tiny_gpt_neox

OBJECTIVES = [
    ("dpo", {}),
    ("mixdpo", {"strength": "point"}),
    ("mixdpo", {"strength": "lognormal"}),
    ("mixdpo", {"strength": "lognormal", "lognormal_method": "monte_carlo"}),
    ("mixdpo", {"strength": "gamma"}),
    ("mixdpo", {"strength": "gamma", "learnable_strength": False}),
    ("corrected_dpo", {}),
    ("agreement", {"agreement_num_types": 3}),
]
BATCH = {"pair_variance": torch.tensor([0.01, 0.05, 0.0]),
         "agreement": torch.tensor([1.0, 0.0, 1.0])}


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_reads():
    """Within: every read of a tensor's value into Python raises HostSync."""

    def forbidden(*args, **kwargs):
        raise HostSync("a tensor value was read on the host")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
            patch.setattr(torch.Tensor, name, forbidden)
        yield


def _loss_and_grads(objective, margin):
    loss = objective(margin, BATCH).mean()
    params = [p for p in objective.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [margin, *params])
    return loss.detach(), grads


@pytest.mark.parametrize(("name", "kwargs"), OBJECTIVES)
def test_loss_forward_backward_reads_nothing_on_the_host(name, kwargs):
    objective = build_objective(name, **kwargs)
    margin = torch.tensor([0.3, -1.2, 0.0], requires_grad=True)
    torch.manual_seed(0)
    expected = _loss_and_grads(objective, margin)
    torch.manual_seed(0)
    with no_host_reads(), sync_free():
        got = _loss_and_grads(objective, margin)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_checks_read_the_host_outside_sync_free():
    """no_host_reads does catch the kernels' checks (so the test above can fail)."""
    objective = build_objective("mixdpo", strength="gamma")
    with no_host_reads(), pytest.raises(HostSync):
        objective(torch.tensor([0.3, -1.2]))


def test_inside_sync_free_a_nan_margin_gives_a_nan_loss_not_an_error():
    objective = build_objective("mixdpo", strength="gamma")
    with sync_free():
        loss = objective(torch.tensor([0.3, float("nan")]))
    assert torch.isnan(loss[1]) and torch.isfinite(loss[0])


def test_the_debug_flag_keeps_the_checks_inside_sync_free(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    objective = build_objective("mixdpo", strength="gamma")
    with sync_free(), pytest.raises(NumericsError, match="margin must be finite, got nan"):
        objective(torch.tensor([0.3, float("nan")]))


def test_a_trainer_step_reads_nothing_on_the_host_and_nan_margins_fail_at_the_log(tmp_path):
    """compute_loss + backward (packed batch, frozen reference) without host reads; a non-finite
    margin (here: a NaN precomputed reference log-prob) raises NumericsError at the next log."""
    rows = [{"prompt": "Say", "chosen": " yes.", "rejected": " no, never."},
            {"prompt": "Count to two:", "chosen": " one two.", "rejected": " three."}]
    tokenizer = build_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in rows], 300)
    args = PreferenceConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                            disable_tqdm=True, per_device_train_batch_size=2, save_strategy="no",
                            objective="mixdpo", strength="gamma")
    trainer = PreferenceTrainer(tiny_gpt_neox(len(tokenizer), seed=0), args=args,
                                train_dataset=datasets.Dataset.from_list(rows),
                                processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.model.train()
    with no_host_reads():
        trainer.compute_loss(trainer.model, batch).backward()
    trainer.log({"loss": 0.0})  # finite margins: logs normally
    batch["ref_chosen_logps"] = torch.tensor([float("nan"), -3.0])
    batch["ref_rejected_logps"] = torch.tensor([-4.0, -5.0])
    trainer.compute_loss(trainer.model, batch)
    with pytest.raises(NumericsError, match="1 of 2 train reward margins since the last log"):
        trainer.log({"loss": 0.0})
