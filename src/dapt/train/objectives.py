"""Losses, one per kind of stage. Each takes (model, batch) and returns (mean loss, units counted)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dapt.data.shards import document_position_ids
from dapt.errors import ConfigError, raised_everywhere
from dapt.model.chunked_loss import chunk_positions, head_returns_losses, logit_transform, logits_bytes
from dapt.model.local_attention import local_attention
from dapt.model.packed_attention import packed_attention, transformers_model

# Above this size a forward pass's fp32 logits are not materialised whole: the loss is computed a chunk of positions
# at a time (dapt.model.chunked_loss). 256 MiB keeps the demo's windows (4 × 256 tokens × 49,152) in one piece and
# cuts an 8k-token window of the same vocabulary into 6 (pretrain.max_logits_mb sets it for training).
MAX_LOGITS_BYTES = 256 * 2**20


def lm_batch(windows: torch.Tensor, eos_id: int | None) -> dict[str, torch.Tensor]:
    """Packed windows (batch, seq_len + 1) → model inputs and next-token targets, each (batch, seq_len).

    With `eos_id`, position ids restart after each end-of-text token so that packed documents do not
    attend to each other (see `document_position_ids`); with None, a window is one causal sequence.
    """
    batch = {"input_ids": windows[:, :-1], "targets": windows[:, 1:]}
    if eos_id is not None:
        batch["position_ids"] = document_position_ids(batch["input_ids"], eos_id)
    return batch


def _lm_logits(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """The model's logits for packed windows; documents kept apart when `position_ids` restart per document. On CPUs
    dapt's own attention runs when it is exact: document by document (`packed_attention`), or block by block for a
    sliding-window model (`local_attention`); at most one of them applies to a model."""
    with packed_attention(model, input_ids, position_ids), local_attention(model, input_ids):
        return model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits


@torch.no_grad()
def document_leak(model: torch.nn.Module, eos_id: int, vocab_size: int) -> float:
    """How far a document's logits move when it is packed after another one instead of scored alone: ~0 when
    the model keeps packed documents apart (its attention honours the restarted position ids), large when it
    lets them attend to each other. Two forward passes of 33 and 16 tokens, the same on every process."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size - 1, (32,), generator=generator)
    tokens[tokens >= eos_id] += 1  # anything but end-of-text
    first, second = tokens[:16], tokens[16:]
    device = next(model.parameters()).device
    packed = torch.cat([first, torch.tensor([eos_id]), second]).unsqueeze(0).to(device)
    alone = second.unsqueeze(0).to(device)
    after_another = _lm_logits(model, packed, document_position_ids(packed, eos_id))[0, 17:].float()
    by_itself = _lm_logits(model, alone, document_position_ids(alone, eos_id))[0].float()
    return float((after_another - by_itself).abs().max() / (1.0 + by_itself.abs().max()))


# A model that keeps packed documents apart scores a document packed after another as it scores it alone (0.0
# measured on CPUs, bf16 included); one that lets them attend to each other moves its logits by 0.1-0.6 of their
# largest magnitude (measured: a random 2-layer OPT with eager attention; SmolLM2 without restarted positions).
LEAK_TOLERANCE = 0.05


def check_documents_kept_apart(model: torch.nn.Module, eos_id: int, vocab_size: int) -> float:
    """Raise a ConfigError naming the fix when `model` lets packed documents attend to each other (`document_leak`
    over LEAK_TOLERANCE); return the measured leak."""
    leak = document_leak(model, eos_id, vocab_size)
    if leak > LEAK_TOLERANCE:
        config = getattr(transformers_model(model), "config", None)
        described = f"{getattr(config, 'model_type', type(model).__name__)} with attention "
        described += str(getattr(config, "_attn_implementation", "?"))
        raise raised_everywhere(  # every process measures the same model the same way
            ConfigError(
                f"pretrain.document_mask: this model ({described}) lets packed documents attend to each other: a "
                f"document packed after another scores differently from the same document alone ({leak:.3f} of its "
                f"largest logit, over the {LEAK_TOLERANCE} allowed). Use base.attn_implementation: sdpa (or "
                "flash_attention_2 on a GPU), or set pretrain.document_mask: false to train on each window as one "
                "sequence."
            )
        )
    return leak


def lm_token_losses(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    targets: torch.Tensor,
    max_logits_bytes: int = MAX_LOGITS_BYTES,
) -> torch.Tensor:
    """Each position's next-token loss (batch, seq) in fp32, 0 where the target is -100. When the batch's fp32
    logits would exceed `max_logits_bytes` (0: never), they are computed a chunk of positions at a time and never
    held whole (dapt.model.chunked_loss); a model that changes its logits after the LM head is refused then in
    training and evaluated on whole logits."""
    inner = transformers_model(model)
    head = inner.get_output_embeddings() if inner is not None else None
    vocab_size = getattr(head, "out_features", None) or getattr(getattr(inner, "config", None), "vocab_size", 0)
    chunked = max_logits_bytes and logits_bytes(targets.numel(), vocab_size) > max_logits_bytes
    if chunked and (torch.is_grad_enabled() or logit_transform(model) is None):  # evaluation: whole logits if it must
        with head_returns_losses(model, targets, chunk_positions(vocab_size, max_logits_bytes)):
            return _lm_logits(model, input_ids, position_ids)
    logits = _lm_logits(model, input_ids, position_ids)
    flat = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none")
    return flat.view(targets.shape)


def causal_lm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], max_logits_bytes: int = MAX_LOGITS_BYTES
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over a batch made by `lm_batch`."""
    targets = batch["targets"]
    losses = lm_token_losses(model, batch["input_ids"], batch.get("position_ids"), targets, max_logits_bytes)
    return losses.mean(), targets.numel()


@torch.no_grad()
def mean_lm_loss(
    model: torch.nn.Module, windows: list[torch.Tensor], batch_size: int = 4, eos_id: int | None = None
) -> float:
    """Mean next-token loss (nats per token) over fixed held-out windows; exp() of it is the perplexity."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = lm_batch(torch.stack(windows[start : start + batch_size]).to(device), eos_id)
        targets = batch["targets"]
        total += lm_token_losses(model, batch["input_ids"], batch.get("position_ids"), targets).sum().item()
        count += targets.numel()
    return total / count


@torch.no_grad()
def text_nats(
    model: torch.nn.Module,
    documents: list[list[int]],
    eos_id: int,
    seq_len: int,
    document_mask: bool = True,
    batch_size: int = 4,
) -> tuple[float, int]:
    """Total next-token loss (nats) over every token of `documents`, and how many tokens that is.

    documents: token ids per document, without end-of-text. They are packed into one stream with an
    end-of-text token before each (eos d1 eos d2 ...), cut into windows of seq_len inputs (the last one
    padded): every document token is a target exactly once; the end-of-text tokens are not targets (they are
    no text), nor is the padding. With `document_mask`, positions restart after each end-of-text, as in
    training (`lm_batch`).
    """
    stream = [token for document in documents for token in (eos_id, *document)]
    scored = [flag for document in documents for flag in (False, *([True] * len(document)))]
    if len(stream) < 2:
        return 0.0, 0
    ids, is_text = torch.tensor(stream), torch.tensor(scored)
    inputs, targets = ids[:-1], torch.where(is_text[1:], ids[1:], -100)  # targets[t] is predicted at inputs[t]
    windows = math.ceil(len(inputs) / seq_len)
    padding = windows * seq_len - len(inputs)
    inputs = F.pad(inputs, (0, padding), value=eos_id).view(windows, seq_len)
    targets = F.pad(targets, (0, padding), value=-100).view(windows, seq_len)
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, windows, batch_size):
        batch = inputs[start : start + batch_size].to(device)
        position_ids = document_position_ids(batch, eos_id) if document_mask else None
        batch_targets = targets[start : start + batch_size].to(device)
        total += lm_token_losses(model, batch, position_ids, batch_targets).sum().item()
    return total, int(is_text.sum())


def bits_per_byte(nats: float, num_bytes: int) -> float:
    """A text's total loss in bits per UTF-8 byte of it: comparable across tokenizers, unlike per-token loss."""
    return nats / math.log(2) / num_bytes


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # exp(50) already means "knows nothing"; avoid overflow to inf


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """logits: (batch, classes); labels: (batch,) class indices."""
    return F.cross_entropy(logits.float(), labels), int(labels.numel())


def response_only_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Next-token loss on the labelled (response) tokens only; prompt and padding are ignored (-100).

    batch: input_ids, attention_mask, labels — each (batch, seq); labels[t] is the token at t (not shifted).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    return loss, int((targets != -100).sum())


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the log-probabilities of each row's labelled (response) tokens: log π(response | prompt), (batch,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization (Rafailov et al. 2023), each input (batch,) sequence log-probs.

    reward = β · (log π(y|x) − log π_ref(y|x)); loss = −log σ(reward_chosen − reward_rejected), averaged.
    Returns (loss, chosen rewards, rejected rewards).
    """
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()
