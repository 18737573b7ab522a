"""General-capability retention: a fixed general-knowledge cloze check, scored by log-likelihood.

Continued pretraining on one domain can erode what the base knew elsewhere. Beside the general held-out
perplexity (`evaluate-lm`), every base and generative variant completes the same 40 general-knowledge sentences
("The capital of France is" → Paris / Berlin / Madrid / Rome; `dapt/eval/data/retention/`, written for dapt,
see the README there). No text is generated: every option's log-likelihood after its sentence is computed in a few
large batched forward passes, so it costs seconds on a CPU and works for any causal LM, chat model or not.

- `accuracy`: the share of items whose right option has the highest log-likelihood per UTF-8 byte of the option
  (lm-evaluation-harness's acc_norm, so that a longer option is not penalised for its length);
- `answer_logprob`: the mean log-likelihood per byte of the right option, a continuous measure that moves before
  the accuracy does on so few items.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import torch


def cloze_items() -> list[dict[str, Any]]:
    """The shipped items: [{id, category, context, options, answer}], `answer` the index of the right option."""
    text = (resources.files("dapt.eval") / "data" / "retention" / "general_knowledge.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


SCORE_BATCH = 64  # sequences per forward pass: few large passes cost far less on a CPU than many small ones


@torch.no_grad()
def continuation_logprobs(model: Any, tokenizer: Any, pairs: list[tuple[str, str]]) -> list[float]:
    """Log-likelihood of each continuation (after a space) following its context, summed over its tokens.

    A continuation starts at the first token where the joint tokenization leaves the context's (BPE may merge
    the space into the continuation's first token). Sequences are right-padded, in batches of SCORE_BATCH."""
    spans = []  # (joint token ids, index of the continuation's first token)
    for context, continuation in pairs:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        ids = tokenizer(f"{context} {continuation}", add_special_tokens=False)["input_ids"]
        start = 0
        while start < min(len(ids), len(context_ids)) and ids[start] == context_ids[start]:
            start += 1
        spans.append((ids, max(start, 1)))  # the first token has no prediction
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    scores = []
    for first in range(0, len(spans), SCORE_BATCH):
        batch = spans[first : first + SCORE_BATCH]
        longest = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, (ids, _) in enumerate(batch):  # right-padded: positions are those of an unpadded text
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
        scores += [float(logprobs[row, start - 1 : len(ids) - 1].sum()) for row, (ids, start) in enumerate(batch)]
    return scores


def score_cloze(model: Any, tokenizer: Any, items: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-item rows) of one model on the cloze items; each row's `correct` is 1.0 or 0.0."""
    pairs = [(item["context"], option) for item in items for option in item["options"]]
    logprobs = iter(continuation_logprobs(model, tokenizer, pairs))
    rows = []
    for item in items:
        per_byte = [next(logprobs) / len(option.encode("utf-8")) for option in item["options"]]
        chosen = max(range(len(per_byte)), key=per_byte.__getitem__)
        rows.append(
            {
                "id": item["id"],
                "chosen": item["options"][chosen],
                "correct": float(chosen == item["answer"]),
                "answer_logprob": per_byte[item["answer"]],
            }
        )
    metrics = {
        "accuracy": sum(r["correct"] for r in rows) / len(rows),
        "answer_logprob": sum(r["answer_logprob"] for r in rows) / len(rows),
        "items": len(rows),
    }
    return metrics, rows
