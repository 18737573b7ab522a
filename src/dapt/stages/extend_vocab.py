"""extend-vocab: the original base with domain tokens added — ChipNeMo's vocabulary extension as a stage.

Recipe (`dapt.tokenizer.extend` does the work, as `dapt tokenizer extend` does alone):
1. stream the curated domain documents of the `domain_train` split of the original tokenization (`tokenize`),
   batch by batch on each of the recipe's passes (memory does not grow with the corpus), so that no held-out
   document shapes the new vocabulary;
2. extend the original base: BPE tokens of the domain text that the base lacks, ranked by the base tokens
   they save, appended as merges after the base's (text without them encodes exactly as before); embedding
   rows for them initialised as the mean of their pieces' rows, the table padded to a multiple of 64;
3. measure tokens per word and per character before and after on the held-out domain (and general)
   validation documents — what the new tokens buy on text they were not chosen on;
4. save the extended base (`model/`, a plain HF folder) and `extension.json`, which lists every added token.

`tokenize-extended` and `pretrain` build on this base; the control variants never see it: they start from
the original base with its original tokenizer, which is the point of the comparison.
"""

from __future__ import annotations

import json
from typing import Any

from dapt.artifacts import atomic_write_text
from dapt.config import VocabConfig
from dapt.data.corpus_texts import SplitTexts
from dapt.errors import DataError
from dapt.model.load import load_causal_lm, save_model_folder
from dapt.stages.context import StageContext
from dapt.stages.tokenize import split_texts
from dapt.tokenizer.compare import measure
from dapt.tokenizer.extend import extend_base

TOP_TOKENS_SHOWN = 20  # in the manifest; extension.json has all of them
SUMMARY_KEYS = (  # of the extension's report, kept in the manifest
    "selection",
    "min_frequency",
    "domain_tokenizer_vocab_size",
    "candidates",
    "added",
    "added_ranked",
    "added_intermediate",
    "old_vocab_size",
    "new_vocab_size",
    "embedding_rows_before",
    "embedding_rows_after",
    "tied_embeddings",
    "domain_documents",
    "domain_tokens_before",
    "domain_tokens_after",
)


def run(context: StageContext) -> dict[str, Any]:
    config = context.section_of(VocabConfig)
    splits_file = context.inputs["tokens"].path / "splits.parquet"
    documents_file = context.inputs["corpus"].path / "documents.parquet"
    domain_train = SplitTexts(splits_file, documents_file, "domain_train")  # read anew on every pass, never held
    if not domain_train.documents:
        raise DataError("vocab: no domain training documents to extend the vocabulary on (see the tokenize stage)")
    # the held-out splits are small (tokenize.eval_max_tokens each): read whole
    texts = split_texts(splits_file, documents_file, wanted=("domain_val", "general_val"))
    model, tokenizer = load_causal_lm(context.inputs["base"].path / "model")
    size = f"{config.add} tokens" if config.add is not None else f"tokens until {config.coverage:.0%} fewer"
    context.log(f"extending the base's {len(tokenizer):,}-token vocabulary: {size}, from the domain training text")
    extension = extend_base(
        model,
        tokenizer,
        domain_train,
        add=config.add,
        coverage=config.coverage,
        domain_vocab_size=config.domain_vocab_size,
        min_frequency=config.min_frequency,
        base=context.inputs["base"].metrics["origin"],
        where="vocab (vocabulary extension): the base",
    )
    report = extension.report
    # held-out text: the extension was not chosen on it
    fertility = {
        split: {"before": measure(tokenizer, texts[split]), "after": measure(extension.tokenizer, texts[split])}
        for split in ("domain_val", "general_val")
        if texts.get(split)
    }
    save_model_folder(extension.model, extension.tokenizer, context.out / "model")
    atomic_write_text(
        context.out / "extension.json",
        json.dumps({**report, "heldout_fertility": fertility}, indent=2, ensure_ascii=False) + "\n",
    )
    domain = fertility.get("domain_val")
    if domain is not None:
        context.log(
            f"{report['added']:,} tokens added (vocabulary {report['old_vocab_size']:,} → "
            f"{report['new_vocab_size']:,}, {report['embedding_rows_after']:,} embedding rows); held-out domain "
            "tokens per word "
            f"{domain['before']['tokens_per_word']:.3f} → {domain['after']['tokens_per_word']:.3f}"
        )
    ranked = [entry for entry in report["added_tokens"] if entry["role"] == "ranked"]
    return {
        **{key: report[key] for key in SUMMARY_KEYS},
        "fertility": fertility,  # on held-out validation documents: "before" is the original tokenizer
        "top_tokens": [entry["text"] or entry["token"] for entry in ranked[:TOP_TOKENS_SHOWN]],
        "model_folder": "model",
        "extension_file": "extension.json",
    }
