"""evaluate: measure each model on its own test — perplexity and bits per byte for bases, task metrics for variants.

"How well the base predicts text does not tell you how good a variant is": the bases are measured on
held-out domain and general text, the variants on their task's test split, loaded the way a user
would load them (`AutoModelForSequenceClassification.from_pretrained`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dapt.config import TaskConfig
from dapt.data.shards import document_position_ids, packed_windows
from dapt.errors import DataError
from dapt.eval.judge import endpoint, rate
from dapt.eval.judge import score as judge_score
from dapt.eval.long_context import (
    loss_by_position,
    passkey_accuracy,
    passkey_lengths,
    position_edges,
    short_context_recovered,
)
from dapt.eval.metrics import classification_report
from dapt.eval.text_metrics import exact_match, rouge_l, token_f1
from dapt.model.chat import encode_pair, prompt_ids
from dapt.model.classifier import encode_right_padded
from dapt.model.load import load_causal_lm
from dapt.stages.adapt import pair_logps, precision_setting
from dapt.stages.context import StageContext
from dapt.stages.tasks import read_examples
from dapt.stages.tokenize import split_texts, tokenize_texts
from dapt.train.objectives import bits_per_byte, lm_token_losses, mean_lm_loss, perplexity, text_nats
from dapt.train.precision import autocast, choose_precision

BATCH = 16
TEXT_METRICS = {"rouge_l": rouge_l, "token_f1": token_f1, "exact_match": exact_match}


def same_tokenizer(first: Any, second: Any) -> bool:
    """Whether two tokenizers cut text into the same ids (same vocabulary and merges)."""
    if hasattr(first, "backend_tokenizer") and hasattr(second, "backend_tokenizer"):
        models = [json.loads(tokenizer.backend_tokenizer.to_str())["model"] for tokenizer in (first, second)]
        return models[0] == models[1]
    return first.get_vocab() == second.get_vocab()


def first_characters(texts: list[str], max_chars: int) -> list[str]:
    """The documents in order until `max_chars` characters in all, the last one cut short if need be."""
    kept: list[str] = []
    total = 0
    for text in texts:
        if total >= max_chars:
            break
        kept.append(text[: max_chars - total])
        total += len(kept[-1])
    return kept


@torch.no_grad()
def token_losses(
    model: torch.nn.Module, tokens: np.ndarray, window: int, eos_id: int, max_windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each predicted token's loss and its position in its document, over packed windows of `window` tokens
    (documents kept apart: positions restart after every end-of-text token). Both (windows * window,)."""
    count = min(max_windows, max(0, (len(tokens) - 1) // window))
    device = next(model.parameters()).device
    losses, positions = [], []
    for index in range(count):
        chunk = torch.from_numpy(np.asarray(tokens[index * window : index * window + window + 1], dtype=np.int64))
        input_ids, targets = chunk[:-1].unsqueeze(0).to(device), chunk[1:].unsqueeze(0).to(device)
        position_ids = document_position_ids(input_ids, eos_id)
        losses.append(lm_token_losses(model, input_ids, position_ids, targets)[0].cpu().numpy())
        positions.append(position_ids[0].cpu().numpy())
    if not losses:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(losses), np.concatenate(positions)


def long_context_report(
    model: torch.nn.Module,
    tokenizer: Any,
    test_tokens: dict[str, np.ndarray],
    *,
    old_window: int,
    new_window: int,
    max_tokens: int,
    seed: int = 0,
) -> dict[str, Any]:
    """One base's passkey accuracy, domain loss by position (windows of the new length) and loss at the old window
    for each held-out split in `test_tokens` (name -> packed token ids, each document ending in end-of-text)."""
    eos_id = tokenizer.eos_token_id
    lengths = passkey_lengths(old_window, new_window)
    report: dict[str, Any] = {"passkey": passkey_accuracy(model, tokenizer, lengths, seed)}
    if "domain" in test_tokens:
        losses, positions = token_losses(
            model, test_tokens["domain"], new_window, eos_id, max(1, -(-max_tokens // new_window))
        )
        report["domain_loss_by_position"] = loss_by_position(losses, positions, position_edges(old_window, new_window))
    for name, tokens in test_tokens.items():
        losses, _ = token_losses(model, tokens, old_window, eos_id, max(1, max_tokens // old_window))
        report[f"{name}_loss_at_old_window"] = float(losses.mean()) if len(losses) else None
    return report


def held_out_texts(context: StageContext) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The held-out test documents by split name (domain, general), and the text bits per byte is measured on: the
    same documents cut after as many characters as `eval_tokens` tokens of the original base's tokenizer hold on
    them. Inputs: `tokens` (the tokenize stage), `corpus` (curate), `original` (the original base)."""
    budget = context.inputs["tokens"].manifest["config"]["tokenize"]["eval_tokens"]
    texts = split_texts(
        context.inputs["tokens"].path / "splits.parquet",
        context.inputs["corpus"].path / "documents.parquet",
        wanted=("domain_test", "general_test"),
    )
    held_out = (("domain", "domain_test"), ("general", "general_test"))
    test_texts = {name: texts[split] for name, split in held_out if texts.get(split)}
    original_tokenizer = AutoTokenizer.from_pretrained(context.inputs["original"].path / "model")
    measured_texts = {}  # the text bits per byte is measured on, the same for every base
    for name, documents in test_texts.items():
        tokens = sum(map(len, original_tokenizer(documents, add_special_tokens=False)["input_ids"]))
        characters = sum(map(len, documents))
        measured_texts[name] = first_characters(documents, math.ceil(budget * characters / max(tokens, 1)))
    return test_texts, measured_texts


def held_out_metrics(
    context: StageContext,
    role: str,
    model: torch.nn.Module,
    tokenizer: Any,
    test_texts: dict[str, list[str]],
    measured_texts: dict[str, list[str]],
    precision: Any,
) -> dict[str, Any]:
    """One base's loss, perplexity and bits per byte on each held-out split (`held_out_texts`), in its own tokens.
    The config holds `seq_len` and `document_mask`, as `evaluate-lm`'s."""
    seq_len, document_mask = context.config["seq_len"], context.config["document_mask"]
    budget = context.inputs["tokens"].manifest["config"]["tokenize"]["eval_tokens"]
    eos_id = tokenizer.eos_token_id
    metrics: dict[str, Any] = {}
    for name, documents in test_texts.items():
        encoded = tokenize_texts(tokenizer, documents, eos_id, f"tokenize {name} test")  # each ends in eos
        windows = packed_windows(np.concatenate(encoded), seq_len, max_tokens=budget)
        if not windows:
            raise DataError(
                f"{context.name}: the {name} test documents are {sum(map(len, encoded))} tokens for the {role} base, "
                f"fewer than one window of {seq_len}; raise tokenize.eval_tokens"
            )
        measured = tokenizer(measured_texts[name], add_special_tokens=False)["input_ids"]
        test_bytes = sum(len(text.encode("utf-8")) for text in measured_texts[name])
        with autocast(precision):
            loss = mean_lm_loss(model, windows, eos_id=eos_id if document_mask else None)
            nats, text_tokens = text_nats(model, measured, eos_id, seq_len, document_mask)
        metrics |= {
            f"{name}_loss": loss,
            f"{name}_ppl": perplexity(loss),
            f"{name}_tokens": len(windows) * seq_len,  # the tokens the loss and perplexity are measured on
            f"{name}_bits_per_byte": bits_per_byte(nats, test_bytes),
            f"{name}_bpb_tokens": text_tokens,  # this base's tokens for the bits-per-byte text
        }
    context.log(
        f"{role}: "
        + ", ".join(
            f"{n} ppl {metrics[f'{n}_ppl']:.3f}, {metrics[f'{n}_bits_per_byte']:.4f} bits/byte" for n in test_texts
        )
    )
    return metrics


def run_lm(context: StageContext) -> dict[str, Any]:
    """Both bases on the same held-out test documents, each tokenized with that base's own tokenizer.

    - loss and perplexity per token on the first `eval_tokens` tokens (packed windows, as in pretraining);
    - bits per UTF-8 byte on the same text for both bases: the test documents in order, cut after as many
      characters as `eval_tokens` tokens of the original base's tokenizer hold on them (about the text the
      perplexity covers; a whole 100k-character document would cost minutes on CPU). Bits per byte stays
      comparable when the tokenizers differ (vocabulary extension); per-token perplexity does not: a
      tokenizer with longer tokens makes fewer, harder predictions for the same text.
    """
    budget = context.inputs["tokens"].manifest["config"]["tokenize"]["eval_tokens"]
    test_texts, measured_texts = held_out_texts(context)
    metrics: dict[str, Any] = {
        "test_documents": {name: len(documents) for name, documents in test_texts.items()},
        "bpb_documents": {name: len(documents) for name, documents in measured_texts.items()},
        "test_characters": {name: sum(map(len, documents)) for name, documents in measured_texts.items()},
        "test_bytes": {
            name: sum(len(t.encode("utf-8")) for t in documents) for name, documents in measured_texts.items()
        },
    }
    tokenizers = {}
    # with pretrain.context: the original base's window and the extended one
    window = None
    if context.config.get("context"):
        from transformers import AutoConfig

        from dapt.config import ContextConfig
        from dapt.model.context import rope_settings

        original_config = AutoConfig.from_pretrained(context.inputs["original"].path / "model")
        old = rope_settings(original_config).get("original_max_position_embeddings")
        window = {
            "old": int(old or original_config.max_position_embeddings),
            "new": ContextConfig.model_validate(context.config["context"]).length,
        }
    long_context: dict[str, Any] = {}
    precision = choose_precision(precision_setting(context))  # both bases alike, as the pretraining computed
    context.log(str(precision))
    metrics |= precision.record()
    for role in ("original", "dapt"):
        model, tokenizer = load_causal_lm(context.inputs[role].path / "model")
        model.eval()
        tokenizers[role] = tokenizer
        eos_id = tokenizer.eos_token_id
        metrics[role] = {"vocab_size": len(tokenizer)} | held_out_metrics(
            context, role, model, tokenizer, test_texts, measured_texts, precision
        )
        if window is not None:  # a context extension: what it bought (long) and cost (short), for each base
            test_tokens = {
                name: np.concatenate(tokenize_texts(tokenizer, documents, eos_id, f"tokenize {name} test"))
                for name, documents in test_texts.items()
            }
            with autocast(precision):
                long_context[role] = long_context_report(
                    model, tokenizer, test_tokens, old_window=window["old"], new_window=window["new"], max_tokens=budget
                )
            context.log(
                f"{role}: passkey accuracy {long_context[role]['passkey']['mean']:.0%} over "
                f"{', '.join(map(str, long_context[role]['passkey']['lengths']))} tokens"
            )
    if window is not None:
        metrics["long_context"] = {
            "old_window": window["old"],
            "new_window": window["new"],
            **long_context,
            "short_context_recovered": short_context_recovered(long_context["original"], long_context["dapt"]),
        }
    metrics["same_tokenizer"] = same_tokenizer(tokenizers["original"], tokenizers["dapt"])
    if not metrics["same_tokenizer"]:
        context.log("the bases' tokenizers differ: compare bits per byte; per-token perplexity is not comparable")
    metrics["test_tokens"] = {name: metrics["original"][f"{name}_tokens"] for name in test_texts}  # original's count
    return metrics


@torch.no_grad()
def run_task(context: StageContext) -> dict[str, Any]:
    """A variant on its task's test split (the task's `TaskConfig` is the stage's section)."""
    task = context.section_of(TaskConfig)
    if task.type == "instruction":
        return run_instruction(context, task)
    if task.type == "preference":
        return run_preference(context, task)
    folder = context.inputs["model"].path / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    labels = json.loads((context.inputs["task"].path / "labels.json").read_text())
    if [model.config.id2label[i] for i in range(len(labels))] != labels:
        raise AssertionError(f"{folder}: the model's labels do not match the task's")
    test = read_examples(context.inputs["task"].path / "test.parquet")
    pad_id = model.config.pad_token_id
    precision = choose_precision(precision_setting(context))  # the variant's training precision
    context.log(str(precision))
    predicted: list[int] = []
    for start in tqdm(range(0, len(test), BATCH), desc=f"evaluate {context.name}", unit="batch", leave=False):
        texts = [e["text"] for e in test[start : start + BATCH]]
        input_ids, attention_mask = encode_right_padded(tokenizer, texts, task.max_length, pad_id)
        with autocast(precision):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        predicted += logits.argmax(dim=-1).tolist()
    truth = [labels.index(e["label"]) for e in test]
    report = classification_report(truth, predicted, labels)
    pq.write_table(
        pa.table(
            {
                "id": [e["id"] for e in test],
                "label": [e["label"] for e in test],
                "predicted": [labels[p] for p in predicted],
            }
        ),
        context.out / "predictions.parquet",
    )
    context.log(f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f} on {len(test)} test examples")
    return {**report, **precision.record()}


@torch.no_grad()
def run_instruction(context: StageContext, task: TaskConfig) -> dict[str, Any]:
    """Greedy answers to the test prompts, scored against the references; loaded as a user would load it."""
    folder = context.inputs["model"].path / "model"
    model, tokenizer = load_causal_lm(folder)
    model.eval()
    test = read_examples(context.inputs["task"].path / "test.parquet")
    stop = [tokenizer.eos_token_id]
    precision = choose_precision(precision_setting(context))  # the variant's training precision
    context.log(str(precision))
    rows = []
    for example in tqdm(test, desc=f"evaluate {context.name}", unit="prompt", leave=False):
        prefix = prompt_ids(tokenizer, example["prompt"])[-task.max_length :]
        with autocast(precision):
            output = model.generate(
                input_ids=torch.tensor([prefix]),
                attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
                max_new_tokens=task.max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0],
            )
        answer = tokenizer.decode(output[0, len(prefix) :], skip_special_tokens=True).strip()
        scores = {name: metric(answer, example["response"]) for name, metric in TEXT_METRICS.items()}
        rows.append(
            {
                "id": example["id"],
                "prompt": example["prompt"],
                "reference": example["response"],
                "generated": answer,
                **scores,
                "score": scores["rouge_l"],
            }
        )
    metrics: dict[str, Any] = {name: sum(r[name] for r in rows) / len(rows) for name in TEXT_METRICS}
    metrics["examples"] = len(rows)
    metrics |= precision.record()
    metrics["judge"] = None  # no judge endpoint configured: the metrics above compare words with the reference
    if task.judge is not None:
        judge = task.judge.model_dump()
        ratings = [
            rate(judge, task.name, r["prompt"], r["reference"], r["generated"])
            for r in tqdm(rows, desc=f"judge {context.name}", unit="answer", leave=False)
        ]
        for row, rating in zip(rows, ratings, strict=True):
            row["judge_rating"] = rating
        metrics["judge"] = {"model": judge["model"], "url": endpoint(judge["url"]), "rubric": "dapt.eval.judge.RUBRIC"}
        metrics["judge_score"] = sum(judge_score(r) for r in ratings) / len(ratings)
        metrics["judge_rating"] = sum(ratings) / len(ratings)
        context.log(f"judge {judge['model']}: mean rating {metrics['judge_rating']:.2f} of 5 on {len(rows)} answers")
    pq.write_table(pa.Table.from_pylist(rows), context.out / "predictions.parquet")
    context.log(
        f"ROUGE-L {metrics['rouge_l']:.3f}, token F1 {metrics['token_f1']:.3f}, exact match "
        f"{metrics['exact_match']:.3f} on {len(rows)} test prompts"
    )
    return metrics


@torch.no_grad()
def run_preference(context: StageContext, task: TaskConfig) -> dict[str, Any]:
    """Held-out pairs: does the variant's implicit reward β·log(π/π_ref) prefer the chosen response?"""
    policy, tokenizer = load_causal_lm(context.inputs["model"].path / "model")
    reference, _ = load_causal_lm(context.inputs["reference"].path / "model")
    beta = task.beta
    test = read_examples(context.inputs["task"].path / "test.parquet")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chosen = [encode_pair(tokenizer, e["prompt"], e["chosen"], task.max_length) for e in test]
    rejected = [encode_pair(tokenizer, e["prompt"], e["rejected"], task.max_length) for e in test]
    precision = choose_precision(precision_setting(context))  # the variant's training precision
    context.log(str(precision))
    reward_chosen = beta * (
        pair_logps(policy, chosen, pad_id, precision) - pair_logps(reference, chosen, pad_id, precision)
    )
    reward_rejected = beta * (
        pair_logps(policy, rejected, pad_id, precision) - pair_logps(reference, rejected, pad_id, precision)
    )
    margins = (reward_chosen - reward_rejected).tolist()
    rows = [
        {"id": e["id"], "prompt": e["prompt"], "reward_margin": m, "score": float(m > 0)}
        for e, m in zip(test, margins, strict=True)
    ]
    pq.write_table(pa.Table.from_pylist(rows), context.out / "predictions.parquet")
    metrics = {
        "preference_accuracy": sum(r["score"] for r in rows) / len(rows),
        "reward_margin": sum(margins) / len(margins),
        "examples": len(rows),
        **precision.record(),
    }
    context.log(
        f"preference accuracy {metrics['preference_accuracy']:.3f}, mean reward margin "
        f"{metrics['reward_margin']:.4f} on {len(rows)} held-out pairs"
    )
    return metrics
