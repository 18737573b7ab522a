"""Context parallelism (dapt.model.context_parallel): two CPU processes (gloo) that split each window's sequence give
the loss and gradients one process computes on the whole window, packed documents kept apart across the split."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from dapt.data.shards import document_position_ids
from dapt.model.context_parallel import ContextParallel, document_segments
from dapt.train.objectives import lm_batch, lm_token_losses

pytestmark = pytest.mark.integration
EOS = 1


def tiny_model(checkpointing: bool) -> LlamaForCausalLM:
    """Grouped-query attention (4 query heads, 2 key/value heads), as most bases have."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa",
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return model


def windows() -> torch.Tensor:
    """4 rows of 33 tokens (32 inputs): documents that cross the middle (where the two chunks meet), one that starts
    right at it, and a row that is one document."""
    generator = torch.Generator().manual_seed(1)
    rows = torch.randint(2, 64, (4, 33), generator=generator)
    rows[0, [5, 12, 27]] = EOS  # a document from 13 to 27 spans both chunks
    rows[1, 15] = EOS  # the next document starts at 16, the first position of the second chunk
    rows[2, [3, 4, 30]] = EOS  # an empty document, then one across the split
    return rows


def mean_loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    losses = lm_token_losses(model, batch["input_ids"], batch.get("position_ids"), batch["targets"], 0)
    loss = losses.mean()
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


# (gradient checkpointing, document mask): packed documents with and without recomputed layers, and rows as one
# sequence each (the split gives the second chunk its positions)
VARIANTS = [(False, True), (True, True), (False, False)]


def split_worker(rank: int, init_file: str, results: dict) -> None:
    """Each variant on two processes (one process group: starting one costs more than the variants)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    context = ContextParallel(size=2, rank=rank, world=2)
    for checkpointing, document_mask in VARIANTS:
        model = tiny_model(checkpointing)
        context.check(model)
        share = context.share(lm_batch(windows(), EOS if document_mask else None))
        with context.attention(model):
            loss, grads = mean_loss_and_grads(model, share)
        assert model.config._attn_implementation == "sdpa", "the model's own attention is put back"
        for grad in grads.values():  # the data-parallel average DDP and FSDP take over every process
            dist.all_reduce(grad)
            grad /= 2
        mean = torch.tensor(loss)
        dist.all_reduce(mean)
        if rank == 0:
            results[(checkpointing, document_mask)] = (mean.item() / 2, grads)
    dist.destroy_process_group()


def test_two_processes_splitting_each_sequence_match_one(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(split_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
        results = dict(results)
    for checkpointing, document_mask in VARIANTS:
        batch = lm_batch(windows(), EOS if document_mask else None)
        reference_loss, reference_grads = mean_loss_and_grads(tiny_model(checkpointing), batch)
        loss, grads = results[(checkpointing, document_mask)]
        assert loss == pytest.approx(reference_loss, rel=1e-5)
        assert grads.keys() == reference_grads.keys()
        for name, grad in grads.items():
            where = f"{name} (checkpointing {checkpointing}, document mask {document_mask})"
            torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-6, msg=where)


def test_the_split_keeps_documents_apart_and_sees_earlier_chunks():
    positions = document_position_ids(windows()[:, :-1], EOS)
    # row 0: documents start at 0, 6, 13, 28; the second chunk (16-31) holds the end of the one from 13
    assert document_segments(positions[0], 32, 16, 16) == [(0, 12, 13, 28), (12, 16, 28, 32)]
    assert document_segments(positions[0], 32, 0, 16) == [(0, 6, 0, 6), (6, 13, 6, 13), (13, 16, 13, 16)]
    assert document_segments(positions[1], 32, 16, 16) == [(0, 16, 16, 32)], "a document starting at the split"
    assert document_segments(None, 32, 16, 16) == [(0, 16, 0, 32)], "one sequence: the second chunk sees it all"


def test_a_model_with_sliding_window_attention_is_refused(monkeypatch):
    monkeypatch.setattr(dist, "new_group", lambda ranks: None)
    model = tiny_model(False)
    model.config.sliding_window = 8
    with pytest.raises(Exception, match="context_parallel.*sliding-window.*context_parallel: 1"):
        ContextParallel(size=2, rank=0, world=2).check(model)


def test_a_sequence_that_does_not_split_evenly_is_refused(monkeypatch):
    monkeypatch.setattr(dist, "new_group", lambda ranks: None)
    context = ContextParallel(size=2, rank=0, world=2)
    with pytest.raises(Exception, match="seq_len: 31 tokens cannot be split over 2"):
        context.share(lm_batch(windows()[:, :32], EOS))
    with pytest.raises(Exception, match="do not divide the 3 processes"):
        ContextParallel(size=2, rank=0, world=3)
