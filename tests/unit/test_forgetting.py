"""Validation losses with a standard error over documents, the forgetting guard's three actions in the training
loop, a remixed data stream that resumes as it would have run, and checkpoint averaging."""

import json
import math
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dapt.data.shards import WindowMixer, open_split, target_documents, write_shard
from dapt.train.checkpoint import Checkpointer, average_checkpoints
from dapt.train.forgetting import DocumentLosses, ForgettingGuard, ForgettingSettings, cluster_standard_error
from dapt.train.loop import LoopSettings, train_loop
from dapt.train.preemption import TrainingStopped


def test_the_standard_error_is_taken_over_documents():
    # equal lengths: the token mean is the mean of the documents' means, its error their spread / sqrt(D)
    means = np.array([2.0, 3.0, 4.0, 5.0])
    sums, tokens = means * 10, np.full(4, 10)
    losses = DocumentLosses(sums, tokens)
    assert losses.mean == pytest.approx(3.5)
    assert losses.standard_error == pytest.approx(np.std(means, ddof=1) / math.sqrt(4))
    # unequal lengths: the mean weighs tokens; the error is the ratio estimator's
    sums, tokens = np.array([20.0, 90.0, 5.0]), np.array([10, 30, 1])
    mean = 115 / 41
    expected = math.sqrt(3 / 2 * sum((s - mean * n) ** 2 for s, n in zip(sums, tokens, strict=True))) / 41
    assert DocumentLosses(sums, tokens).mean == pytest.approx(mean)
    assert cluster_standard_error(sums, tokens) == pytest.approx(expected)
    # one document (or documents no window reached): no standard error
    assert cluster_standard_error(np.array([5.0, 0.0]), np.array([3, 0])) is None


def test_each_target_of_a_held_out_window_is_given_its_document(tmp_path):
    write_shard(tmp_path / "val", [[1] * 5, [2] * 3, [3] * 9], vocab_size=10)  # offsets 0, 5, 8, 17
    split = open_split(tmp_path / "val")
    documents = target_documents(split, split.num_windows(4), 4)
    # window i predicts tokens 4i+1 ... 4i+4 of the split: window 1 tokens 5-7 (document 1) and 8 (document 2)
    assert documents.tolist() == [[0, 0, 0, 0], [1, 1, 1, 2], [2, 2, 2, 2], [2, 2, 2, 2]]


def regression():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(16, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return model, (lambda: (x, y)), (lambda m, b: (torch.nn.functional.mse_loss(m(b[0]), b[1]), len(b[0])))


class PlannedEvaluations:
    """An evaluator whose domain loss and general documents' losses follow a plan, one entry per evaluation."""

    def __init__(self, domain, general):
        self.domain, self.general, self.calls = iter(domain), iter(general), 0

    def __call__(self):
        self.documents = next(self.general)
        return {"domain_val_loss": next(self.domain), "general_val_loss": self.documents.mean}


def documents(*means, tokens=10):
    """Documents of `tokens` tokens each with these mean losses."""
    return DocumentLosses(np.array(means, dtype=np.float64) * tokens, np.full(len(means), tokens))


BASE = documents(3.0, 3.2, 2.8, 3.0)  # general loss 3.0
WITHIN = documents(3.03, 3.23, 2.83, 3.03)  # +1%
OVER = documents(3.3, 3.5, 3.1, 3.3)  # +10%, the same on every document: far beyond noise


def guarded_run(action, general, domain, remix=None, max_steps=8):
    model, batch, loss_fn = regression()
    evaluations = PlannedEvaluations(domain, general)
    guard = ForgettingGuard(ForgettingSettings(budget=0.02, action=action), lambda: evaluations.documents, remix)
    settings = LoopSettings(max_steps=max_steps, lr=0.01, eval_every=2, monitor="domain_val_loss")
    return train_loop(model, batch, loss_fn, settings, evaluate=evaluations, guard=guard), guard


def test_stop_ends_training_at_the_first_evaluation_over_the_budget_and_keeps_the_best_within_it():
    result, guard = guarded_run("stop", [BASE, WITHIN, OVER, WITHIN, WITHIN], [2.0, 1.5, 1.0, 0.9, 0.8])
    assert result.stopped_early and result.steps == 4
    assert "forgetting budget of 2.00%" in result.stop_reason
    assert result.best_step == 2, "step 4 has the lower domain loss but is over the budget"
    assert [check["action"] for check in guard.checks] == ["", "", "stop"]
    assert guard.checks[2]["rise"] == pytest.approx(0.10)


def test_warn_trains_on_and_no_step_over_the_budget_is_the_best():
    result, guard = guarded_run("warn", [BASE, WITHIN, OVER, OVER, WITHIN], [2.0, 1.5, 1.0, 0.9, 1.2])
    assert not result.stopped_early and result.steps == 8
    assert [check["action"] for check in guard.checks] == ["", "", "warn", "warn", ""]
    assert result.best_step == 8


def test_a_rise_over_the_budget_but_within_two_standard_errors_is_not_acted_on():
    # +3% on average, but the documents disagree (+13%, -7%, ...): the paired error is larger than the excess
    noisy = documents(3.39, 2.98, 3.16, 2.73)
    result, guard = guarded_run("stop", [BASE, noisy, noisy, noisy, noisy], [2.0, 1.5, 1.4, 1.3, 1.2])
    check = guard.checks[1]
    assert check["rise"] > 0.02 and check["rise"] - 0.02 < 2 * check["rise_se"]
    assert not check["over_budget"] and not result.stopped_early and result.best_step == 8


def test_remix_raises_the_replay_share_up_to_its_ceiling_and_records_it():
    shares = []

    def remix(factor, ceiling):
        before = shares[-1] if shares else 0.2
        shares.append(min(before * factor, ceiling))
        return before, shares[-1]

    result, guard = guarded_run("remix", [BASE, OVER, OVER, OVER, WITHIN], [2.0, 1.5, 1.0, 0.9, 0.8], remix)
    assert not result.stopped_early and result.steps == 8
    assert [check.get("replay_share") for check in guard.checks] == [None, [0.2, 0.4], [0.4, 0.5], [0.5, 0.5], None]
    assert guard.checks[3]["action"] == "remix (replay share already at remix_max_replay)"
    assert "replay share 20.0% → 40.0%" in guard.describe(guard.checks[1])


def mixer(tmp_path):
    write_shard(tmp_path / "domain", [list(range(1, 200))], vocab_size=300)
    write_shard(tmp_path / "replay", [list(range(100, 300))], vocab_size=300)
    sources = {"domain_train": open_split(tmp_path / "domain"), "replay_train": open_split(tmp_path / "replay")}
    return WindowMixer(sources, {"domain_train": 0.9, "replay_train": 0.1}, seq_len=4, seed=3)


def test_a_remixed_stream_resumed_from_its_state_draws_as_the_uninterrupted_one(tmp_path):
    whole = mixer(tmp_path)
    first = [next(whole)[0] for _ in range(30)]
    assert whole.raise_share({"replay_train"}, 4.0, 0.5) == (pytest.approx(0.1), pytest.approx(0.4))
    expected = [next(whole)[0] for _ in range(200)]

    interrupted = mixer(tmp_path)
    assert [next(interrupted)[0] for _ in range(30)] == first
    interrupted.raise_share({"replay_train"}, 4.0, 0.5)
    state = json.loads(json.dumps(interrupted.state_dict()))  # as a checkpoint keeps it
    resumed = mixer(tmp_path)
    resumed.load_state_dict(state)
    assert [next(resumed)[0] for _ in range(200)] == expected
    assert 0.3 < expected.count("replay_train") / 200 < 0.5, "drawn at the new share"


class MixedBatches:
    """Regression batches whose rows come from a WindowMixer's windows; SIGTERM at draw `signal_at`."""

    def __init__(self, mixer, signal_at=None):
        self.mixer, self.signal_at, self.draws, self.names = mixer, signal_at, 0, []

    def __call__(self):
        if self.draws == self.signal_at:
            signal.raise_signal(signal.SIGTERM)
        self.draws += 1
        drawn = [next(self.mixer) for _ in range(4)]
        self.names += [name for name, _ in drawn]
        x = torch.stack([window[:4].float() / 300 for _, window in drawn])
        return x, x.sum(dim=1, keepdim=True)

    def state_dict(self):
        return {"mixer": self.mixer.state_dict(), "draws": self.draws}

    def load_state_dict(self, state):
        self.mixer.load_state_dict(state["mixer"])
        self.draws = state["draws"]


def remixed_run(folder, data):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)

    def save_model(path, weights):
        path.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")

    plan = PlannedEvaluations([2.0, 1.5, 1.0, 0.9, 0.8], [BASE, OVER, WITHIN, WITHIN, WITHIN])
    guard = ForgettingGuard(
        ForgettingSettings(budget=0.02, action="remix", remix_factor=4.0),
        lambda: plan.documents,
        lambda factor, ceiling: data.mixer.raise_share({"replay_train"}, factor, ceiling),
    )
    checkpointer = Checkpointer(
        folder, save_model, lambda path: model.load_state_dict(load_file(path / "model.safetensors"))
    )
    settings = LoopSettings(max_steps=8, lr=0.01, eval_every=2, monitor="domain_val_loss")
    if any(folder.glob("step-*")):  # resumed after step 5: the evaluations at 0, 2 and 4 were made
        for _ in range(3):
            plan()
    result = train_loop(model, data, loss_fn_mse, settings, evaluate=plan, checkpointer=checkpointer, guard=guard)
    return model, result, guard


def loss_fn_mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1]), len(batch[0])


def test_a_run_remixed_by_the_guard_resumes_to_the_data_and_weights_of_an_uninterrupted_one(tmp_path):
    reference = MixedBatches(mixer(tmp_path))
    expected_model, _, expected_guard = remixed_run(tmp_path / "reference", reference)
    assert expected_guard.checks[1]["replay_share"] == [pytest.approx(0.1), pytest.approx(0.4)]

    with pytest.raises(TrainingStopped, match="after step 5 of 8"):
        remixed_run(tmp_path / "run", MixedBatches(mixer(tmp_path), signal_at=4))  # drawing step 5's batch
    data = MixedBatches(mixer(tmp_path))
    model, result, guard = remixed_run(tmp_path / "run", data)
    assert result.resumed_from == 5
    assert data.names == reference.names[5 * 4 :], "steps 6-8 drew what the uninterrupted run drew"
    assert guard.checks == expected_guard.checks
    assert torch.equal(model.weight, expected_model.weight)


def test_averaging_checkpoints_averages_every_tensor_and_keeps_the_other_files(tmp_path):
    folders = []
    for number, value in enumerate([1.0, 2.0, 6.0]):
        folder = tmp_path / f"step-{number}"
        folder.mkdir()
        save_file(
            {"w": torch.full((2, 3), value), "b": torch.tensor([value, -value], dtype=torch.bfloat16)},
            folder / "model.safetensors",
        )
        (folder / "config.json").write_text(json.dumps({"step": number}))
        (folder / "training_state.pt").write_bytes(b"state")
        folders.append(folder)
    out = average_checkpoints(folders, tmp_path / "average")
    averaged = load_file(out / "model.safetensors")
    assert torch.equal(averaged["w"], torch.full((2, 3), 3.0))
    assert averaged["b"].dtype == torch.bfloat16 and averaged["b"].tolist() == [3.0, -3.0]
    assert json.loads((out / "config.json").read_text()) == {"step": 2}, "the last checkpoint's files"
    assert not (out / "training_state.pt").exists()
