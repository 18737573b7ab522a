"""cost: what adaptation cost — two-sided safety and general-knowledge retention, and the gates on them.

"What it bought" is the domain perplexity and the task metrics; this stage measures what it may have cost:

- `cost-bases`: the original and the DAPT base. The safety check (greedy answers to harmful requests, which should
  be refused, and to safe look-alikes, which should be answered; `dapt.eval.safety`) runs when the base is a chat
  model (its tokenizer has a chat template, as SmolLM2-Instruct's has): a plain base has no alignment to lose.
  The general-knowledge cloze check (`dapt.eval.retention`) runs for every base.
- `cost-<task>-<variant>`: every variant of an instruction or preference task (both variants, each seed), the same
  two checks; its prompts go through the variant's own template, as its task's did.
- `cost-restored` (with `restore:`): the restored base (`dapt.stages.restore`), the same two checks (safety when its
  tokenizer has a chat template) and its domain and general held-out perplexity, on `evaluate-lm`'s windows.
- `gates`: compares the DAPT base with the original, and each task's DAPT variant with its control: the
  differences in refusal rate, compliance rate and cloze accuracy with their paired-bootstrap 95% intervals
  (resampling the prompts, as the task metrics resample test examples), the general perplexity's change, and
  which of the configured gates (`safety:`, `retention:`) broke. A gate compares the point estimates; with 12
  prompts a set, one answer moves a rate by 0.083, more than the default 0.05 — read a broken safety gate
  with the interval beside it. Changing a threshold re-runs this stage alone: nothing is generated again. A restored
  base is compared with the original too, and its gates count like the others'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from dapt.artifacts import Artifact
from dapt.config import SafetyConfig
from dapt.eval.metrics import paired_bootstrap
from dapt.eval.retention import cloze_items, score_cloze
from dapt.eval.safety import SETS, is_refusal, judge_refusal, prompt_set, rates
from dapt.model.chat import prompt_ids, uses_chat_template
from dapt.model.load import load_causal_lm
from dapt.stages.adapt import precision_setting
from dapt.stages.context import StageContext
from dapt.stages.evaluate import held_out_metrics, held_out_texts
from dapt.train.precision import autocast, choose_precision

GENERATE_BATCH = 24  # prompts answered together (left-padded): on a CPU, a step costs about as much for 24 as for 1


@torch.no_grad()
def greedy_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, precision: Any) -> list[str]:
    """Greedy answers to `prompts`, each in the model's template (`prompt_ids`), in batches left-padded."""
    stop = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    answers = []
    for start in range(0, len(prompts), GENERATE_BATCH):
        prefixes = [prompt_ids(tokenizer, prompt) for prompt in prompts[start : start + GENERATE_BATCH]]
        longest = max(map(len, prefixes))
        input_ids = torch.full((len(prefixes), longest), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prefixes), longest), dtype=torch.long)
        for row, ids in enumerate(prefixes):
            input_ids[row, longest - len(ids) :] = torch.tensor(ids)
            attention_mask[row, longest - len(ids) :] = 1
        with autocast(precision):
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=pad,
            )
        answers += [tokenizer.decode(row[longest:], skip_special_tokens=True).strip() for row in output]
    return answers


def measure(
    context: StageContext, label: str, model: Any, tokenizer: Any, *, safety: bool
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """One model's (metrics, answer rows, cloze rows): the safety check when `safety`, the cloze check always."""
    settings = context.section_of(SafetyConfig)
    precision = choose_precision(precision_setting(context))
    model.eval()
    with autocast(precision):
        retention, cloze_rows = score_cloze(model, tokenizer, cloze_items())
    metrics: dict[str, Any] = {"retention": retention, "safety": None}
    answer_rows: list[dict[str, Any]] = []
    if safety:
        prompts = [p | {"set": name} for name in SETS for p in prompt_set(name)]
        answers = greedy_answers(model, tokenizer, [p["prompt"] for p in prompts], settings.max_new_tokens, precision)
        answer_rows = [
            {key: p[key] for key in ("set", "id", "category", "prompt")}
            | {"answer": answer, "refused": is_refusal(answer)}
            for p, answer in zip(prompts, answers, strict=True)
        ]
        metrics["safety"] = rates(answer_rows) | {"prompts": {name: len(prompt_set(name)) for name in SETS}}
        if settings.judge is not None:
            judge = settings.judge.model_dump()
            for row in tqdm(answer_rows, desc=f"judge {label}", unit="answer", leave=False):
                row["judge_refused"] = judge_refusal(judge, row["prompt"], row["answer"])
            metrics["safety"]["judge"] = rates(answer_rows, "judge_refused") | {"model": judge["model"]}
    for row in answer_rows + cloze_rows:
        row["model"] = label
    context.log(
        f"{label}: general-knowledge cloze accuracy {retention['accuracy']:.3f} ({retention['items']} items)"
        + (
            f"; refuses {metrics['safety']['refusal_rate']:.0%} of harmful requests, answers "
            f"{metrics['safety']['compliance_rate']:.0%} of safe ones"
            if metrics["safety"]
            else ""
        )
    )
    return metrics, answer_rows, cloze_rows


def _write(context: StageContext, answers: list[dict[str, Any]], cloze: list[dict[str, Any]]) -> None:
    if answers:
        pq.write_table(pa.Table.from_pylist(answers), context.out / "answers.parquet")
    pq.write_table(pa.Table.from_pylist(cloze), context.out / "cloze.parquet")


def run_bases(context: StageContext) -> dict[str, Any]:
    """The original and the DAPT base; the safety check only when the original base is a chat model."""
    answers: list[dict[str, Any]] = []
    cloze: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for role in ("original", "dapt"):
        model, tokenizer = load_causal_lm(context.inputs[role].path / "model")
        if role == "original":
            metrics["chat_model"] = uses_chat_template(tokenizer)
            if not metrics["chat_model"]:
                context.log("the original base has no chat template: no alignment to measure, the cloze check only")
        metrics[role], model_answers, model_cloze = measure(
            context, role, model, tokenizer, safety=metrics["chat_model"]
        )
        answers += model_answers
        cloze += model_cloze
    _write(context, answers, cloze)
    return metrics


def run_variant(context: StageContext) -> dict[str, Any]:
    """One instruction or preference variant, asked in its own template."""
    model, tokenizer = load_causal_lm(context.inputs["model"].path / "model")
    metrics, answers, cloze = measure(context, context.config["variant"], model, tokenizer, safety=True)
    _write(context, answers, cloze)
    return {"model": metrics, "variant": context.config["variant"]}


def run_restored(context: StageContext) -> dict[str, Any]:
    """The restored base: safety (when it has a chat template), the cloze check, and its domain and general
    held-out perplexity and bits per byte on the texts and windows `evaluate-lm` measured the bases on."""
    model, tokenizer = load_causal_lm(context.inputs["model"].path / "model")
    chat_model = uses_chat_template(tokenizer)
    if not chat_model:
        context.log("the restored base has no chat template: no alignment to measure, the cloze check only")
    metrics, answers, cloze = measure(context, "restored", model, tokenizer, safety=chat_model)
    test_texts, measured_texts = held_out_texts(context)
    precision = choose_precision(precision_setting(context))
    metrics["lm"] = {"vocab_size": len(tokenizer)} | held_out_metrics(
        context, "restored", model, tokenizer, test_texts, measured_texts, precision
    )
    _write(context, answers, cloze)
    restored = context.inputs["model"].metrics
    return {"model": metrics, "chat_model": chat_model} | {k: restored[k] for k in ("method", "weight", "formula")}


# -- the gates ------------------------------------------------------------------------------------------


def _per_prompt(artifacts: list[Artifact], label: str) -> dict[str, np.ndarray]:
    """Per prompt or item, in file order, the mean over `artifacts` (seeds) of: refused (harmful), answered
    (safe), correct (cloze); a measure the artifacts lack is left out."""
    out: dict[str, list[np.ndarray]] = {}
    for artifact in artifacts:
        cloze = pq.read_table(artifact.path / "cloze.parquet").to_pylist()
        out.setdefault("cloze", []).append(np.array([r["correct"] for r in cloze if r["model"] == label]))
        if (artifact.path / "answers.parquet").is_file():
            rows = [r for r in pq.read_table(artifact.path / "answers.parquet").to_pylist() if r["model"] == label]
            out.setdefault("harmful", []).append(np.array([float(r["refused"]) for r in rows if r["set"] == "harmful"]))
            out.setdefault("safe", []).append(np.array([1.0 - r["refused"] for r in rows if r["set"] == "safe"]))
    return {name: np.mean(values, axis=0) for name, values in out.items() if len(values) == len(artifacts)}


MEASURES = {  # per-prompt measure → (what its mean is called, the gate on its drop or None)
    "harmful": ("refusal_rate", "safety.max_refusal_drop"),
    "safe": ("compliance_rate", "safety.max_over_refusal_rise"),  # a compliance drop is an over-refusal rise
    "cloze": ("cloze_accuracy", None),
}


def compare(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], thresholds: dict[str, float | None]
) -> dict[str, Any]:
    """candidate − reference for each measure both have: means, the difference and its paired 95% interval, and
    the gates it breaks (a drop larger than the gate's threshold)."""
    comparison: dict[str, Any] = {"broken": []}
    for measure, (name, gate) in MEASURES.items():
        if measure not in reference or measure not in candidate:
            continue
        before, after = float(reference[measure].mean()), float(candidate[measure].mean())
        low, high = paired_bootstrap(reference[measure], candidate[measure])
        comparison[name] = {"reference": before, "candidate": after, "difference": after - before, "ci95": [low, high]}
        limit = thresholds.get(gate) if gate else None
        if limit is not None and before - after > limit + 1e-12:
            comparison["broken"].append(
                {
                    "gate": gate,
                    "limit": limit,
                    "measured": before - after,
                    "message": f"{gate} {limit:g} broken: {name.replace('_', ' ')} {before:.3f} → {after:.3f} "
                    f"(a drop of {before - after:.3f})",
                }
            )
    return comparison


def general_ppl_gate(lm: dict[str, Any], limit: float | None) -> dict[str, Any] | None:
    """The general held-out perplexity of the DAPT base against the original's (bits per byte when the tokenizers
    differ, where per-token perplexity does not compare): the relative rise, and the gate's verdict."""
    same = lm.get("same_tokenizer", True)
    key = "general_ppl" if same else "general_bits_per_byte"
    before, after = lm["original"].get(key), lm["dapt"].get(key)
    if before is None or after is None:
        return None
    rise = after / before - 1
    result: dict[str, Any] = {"measure": key, "before": before, "after": after, "rise": rise, "broken": None}
    if limit is not None and rise > limit + 1e-12:
        result["broken"] = {
            "gate": "retention.max_general_ppl_rise",
            "limit": limit,
            "measured": rise,
            "message": f"retention.max_general_ppl_rise {limit:g} broken: general "
            f"{'perplexity' if same else 'bits per byte'} {before:.3f} → {after:.3f} ({rise:+.1%})",
        }
    return result


def _judged(reference: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The LLM judge's rates (mean over seeds) of both sides, when a judge labelled the answers."""
    judged = [m["safety"]["judge"] for m in reference + candidate if m.get("safety") and m["safety"].get("judge")]
    if not judged or len(judged) != len(reference) + len(candidate):
        return None

    def mean(side: list[dict[str, Any]]) -> dict[str, float]:
        return {k: float(np.mean([m["safety"]["judge"][k] for m in side])) for k in ("refusal_rate", "compliance_rate")}

    return {"model": judged[0]["model"], "reference": mean(reference), "candidate": mean(candidate)}


def _summary(lm: dict[str, Any], measured: dict[str, Any]) -> dict[str, float | None]:
    """One model's row beside the others: held-out perplexity and bits per byte, safety rates, cloze accuracy."""
    safety = measured.get("safety") or {}
    return {key: lm.get(key) for key in RESTORED_LM_MEASURES} | {
        "refusal_rate": safety.get("refusal_rate"),
        "compliance_rate": safety.get("compliance_rate"),
        "cloze_accuracy": measured["retention"]["accuracy"],
    }


RESTORED_LM_MEASURES = ("domain_ppl", "general_ppl", "domain_bits_per_byte", "general_bits_per_byte")


def restored_comparison(
    bases: Artifact, restored: Artifact, lm: Artifact, thresholds: dict[str, float | None]
) -> dict[str, Any]:
    """The restored base against the original (the same measures and gates as the DAPT base's), and the three
    models side by side (`models`: original, DAPT, restored)."""
    comparison = compare(_per_prompt([bases], "original"), _per_prompt([restored], "restored"), thresholds)
    restored_lm = restored.metrics["model"]["lm"]
    general = general_ppl_gate(
        {"original": lm.metrics["original"], "dapt": restored_lm, "same_tokenizer": lm.metrics["same_tokenizer"]},
        thresholds["retention.max_general_ppl_rise"],
    )
    comparison["general"] = general
    if general and general["broken"]:
        comparison["broken"].append(general["broken"])
    return comparison | {
        "name": "restored",
        "reference": "original base",
        "candidate": "restored base",
        "candidate_id": restored.manifest["inputs"]["model"]["id"],
        "chat_model": restored.metrics["chat_model"],
        "method": restored.metrics["method"],
        "weight": restored.metrics["weight"],
        "formula": restored.metrics["formula"],
        "judge": _judged([bases.metrics["original"]], [restored.metrics["model"]]),
        "models": {
            "original": _summary(lm.metrics["original"], bases.metrics["original"]),
            "dapt": _summary(lm.metrics["dapt"], bases.metrics["dapt"]),
            "restored": _summary(restored_lm, restored.metrics["model"]),
        },
    }


def run_gates(context: StageContext) -> dict[str, Any]:
    """The DAPT base against the original, each task's DAPT variants against their controls; the broken gates."""
    thresholds = {
        f"{section}.{key}": value
        for section in ("safety", "retention")
        for key, value in context.config[section].items()
    }
    bases = context.inputs["bases"]
    base = compare(_per_prompt([bases], "original"), _per_prompt([bases], "dapt"), thresholds)
    general = general_ppl_gate(context.inputs["lm"].metrics, thresholds["retention.max_general_ppl_rise"])
    base["general"] = general
    if general and general["broken"]:
        base["broken"].append(general["broken"])
    base |= {"name": "bases", "reference": "original base", "candidate": "DAPT base"}
    base["candidate_id"] = bases.manifest["inputs"]["dapt"]["id"]
    base["chat_model"] = bases.metrics.get("chat_model", False)
    base["judge"] = _judged([bases.metrics["original"]], [bases.metrics["dapt"]])
    comparisons = [base]
    if "restored" in context.inputs:
        comparisons.append(restored_comparison(bases, context.inputs["restored"], context.inputs["lm"], thresholds))
    for task in context.config["tasks"]:
        runs = {
            variant: [context.inputs[name] for name in names] for variant, names in task["runs"].items()
        }  # variant → its cost artifacts, one per seed
        comparison = compare(_per_prompt(runs["control"], "control"), _per_prompt(runs["dapt"], "dapt"), thresholds)
        main = context.inputs[task["runs"]["dapt"][0]]
        comparison |= {
            "name": task["name"],
            "reference": "control variant",
            "candidate": "DAPT variant",
            "candidate_id": main.manifest["inputs"]["model"]["id"],
            "seeds": len(runs["dapt"]),
            "judge": _judged([a.metrics["model"] for a in runs["control"]], [a.metrics["model"] for a in runs["dapt"]]),
        }
        comparisons.append(comparison)
    broken = [dict(b, comparison=c["name"], candidate_id=c["candidate_id"]) for c in comparisons for b in c["broken"]]
    for item in broken:
        context.log(f"GATE BROKEN ({item['comparison']}): {item['message']}")
    if not broken:
        context.log("every gate holds")
    sizes = {name: len(prompt_set(name)) for name in SETS} | {"items": len(cloze_items())}
    return {"comparisons": comparisons, "broken": broken, "thresholds": thresholds, "sizes": sizes}
