"""`dapt tokenizer compare`: how many tokens a tokenizer spends on domain and on general text.

Fertility (Rust et al. 2021, "How Good is Your Tokenizer?") is tokens per whitespace word; tokens per
character is the same cost without the word splitting (it also counts code, numbers and punctuation
fairly). The share of words cut into ≥ 3 pieces shows where the cost comes from: a domain term in many
pieces costs sequence length and is harder for the model to learn as a unit. Compared for a base and an
extended (or newly trained) tokenizer, the numbers say what an extension bought on the domain and what it
cost on general text (a merge-based extension never costs anything there; see `extend.py`).

The counting is `dapt assess`'s own (`dapt.tokenizer.fertility`), so the numbers agree with its report. The
corpora are streamed: one pass per side draws the sample every tokenizer is measured on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from dapt.data.corpus_texts import WordSample, with_progress
from dapt.errors import ConfigError, DataError
from dapt.tokenizer.fertility import SPLIT_WORD_TOKENS, tokenizer_fertility
from dapt.tokenizer.train import open_corpus

# Up to 2M words per side (about 14 MB of English; ~10 s per tokenizer at the ~1.4 MB/s that offset-tracking
# tokenisation ran at here on SciPy's docstrings). A bigger corpus is sampled by whole documents in a seeded
# order, the same documents for every tokenizer, so the comparison stays paired.
MEASURE_MAX_WORDS = 2_000_000


def fertility_sample(texts: Iterable[str], max_words: int = MEASURE_MAX_WORDS) -> WordSample:
    """Whole documents in a seeded random order until `max_words` words (all of them when the corpus is smaller),
    drawn in one pass over `texts` with memory for the sample only."""
    sample = WordSample(max_words)
    for text in texts:
        sample.offer(text)
    return sample


def measure_documents(tokenizer: PreTrainedTokenizerBase, documents: list[str]) -> dict[str, Any]:
    """Tokens per word and per character, and the share of words in ≥ SPLIT_WORD_TOKENS pieces, on every document.

    Special tokens are not counted. Documents holding only whitespace are skipped (as `tokenizer_fertility`
    skips them), so characters and tokens come from the same documents.
    """
    sample = [text for text in documents if text.strip()]
    fertility = tokenizer_fertility(tokenizer, sample, max_words=sys.maxsize)  # every document
    characters = sum(map(len, sample))
    return {
        "documents": len(sample),
        "words": fertility.words,
        "characters": characters,
        "tokens": fertility.tokens,
        "tokens_per_word": fertility.tokens_per_word,
        "tokens_per_char": fertility.tokens / max(characters, 1),
        "split_share": fertility.split_share,
    }


def measure(
    tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], max_words: int = MEASURE_MAX_WORDS
) -> dict[str, Any]:
    """`measure_documents` on a seeded sample of `texts` of up to about `max_words` words (`fertility_sample`)."""
    return measure_documents(tokenizer, fertility_sample(texts, max_words).texts())


def _looks_local(spec: str) -> bool:
    """A path rather than a hub id ("org/name" or "name"): absolute, relative with ./ or ~, or deeper than org/name."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith("/")


def check_model_spec(spec: str, option: str) -> None:
    """A local model or tokenizer path that does not exist is a DataError naming it, not a failed hub download."""
    if _looks_local(spec) and not Path(spec).expanduser().exists():
        raise DataError(f"{option} {spec}: not found (looked in {Path(spec).expanduser().resolve().parent})")


def load_tokenizer(spec: str, option: str = "--base") -> PreTrainedTokenizerBase:
    """A tokenizer from a model or tokenizer folder, a hub id, a .gguf file, or package:PKG/FILE.gguf."""
    from dapt.model.load import find_package_file

    check_model_spec(spec, option)
    if spec.startswith("package:") or spec.endswith(".gguf"):
        path = find_package_file(spec) if spec.startswith("package:") else Path(spec).expanduser()
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    try:
        return AutoTokenizer.from_pretrained(str(Path(spec).expanduser()) if _looks_local(spec) else spec)
    except (OSError, ValueError) as error:
        where = (
            "a local folder" if Path(spec).exists() else "a local folder (none there) or a hub id that could be fetched"
        )
        raise ConfigError(f"{option}: could not load a tokenizer from {spec!r} as {where}: {error}") from None


def compare_tokenizers(
    tokenizers: dict[str, PreTrainedTokenizerBase], domain: Iterable[str], general: Iterable[str] | None = None
) -> dict[str, Any]:
    """Each tokenizer measured on the same domain (and general) documents; keys are the names given.

    Each side is read once, as a stream, to draw its sample (`fertility_sample`); `sample` in the report says,
    per side, how many documents were read and how many of them were measured.
    """
    samples = {"domain": fertility_sample(with_progress(domain, "tokenizer compare: read domain text"))}
    if general is not None:
        samples["general"] = fertility_sample(with_progress(general, "tokenizer compare: read general text"))
    drawn = {side: sample.texts() for side, sample in samples.items()}
    report: dict[str, Any] = {
        "split_word_tokens": SPLIT_WORD_TOKENS,
        "sample": {
            side: {"documents_read": sample.offered, "documents": len(drawn[side]), "max_words": MEASURE_MAX_WORDS}
            for side, sample in samples.items()
        },
        "tokenizers": {},
    }
    for name, tokenizer in tokenizers.items():
        report["tokenizers"][name] = {
            "vocab_size": len(tokenizer),
            "domain": measure_documents(tokenizer, drawn["domain"]),
            "general": measure_documents(tokenizer, drawn["general"]) if "general" in drawn else None,
        }
    return report


_ROWS = (
    ("tokens_per_word", "tokens per word", "{:.3f}"),
    ("tokens_per_char", "tokens per character", "{:.4f}"),
    ("split_share", f"words in ≥ {SPLIT_WORD_TOKENS} pieces", "{:.1%}"),
)


def render_table(report: dict[str, Any]) -> str:
    """Rows: measures; columns: the tokenizers, then the change from the first to the second."""
    names = list(report["tokenizers"])
    sides = [side for side in ("domain", "general") if report["tokenizers"][names[0]][side] is not None]
    header = ["", *names, *(["change"] if len(names) == 2 else [])]
    rows = [header, ["vocabulary", *(f"{report['tokenizers'][name]['vocab_size']:,}" for name in names)]]
    if len(names) == 2:
        first, second = (report["tokenizers"][name]["vocab_size"] for name in names)
        rows[-1].append(f"{second - first:+,}")
    for side in sides:
        for key, label, spec in _ROWS:
            values = [report["tokenizers"][name][side][key] for name in names]
            row = [f"{side} {label}", *("—" if value is None else spec.format(value) for value in values)]
            if len(names) == 2 and None not in values:
                if key == "split_share":
                    row.append(f"{(values[1] - values[0]) * 100:+.1f} points")
                else:
                    row.append(f"{values[1] / values[0] - 1:+.1%}")
            rows.append(row)
    widths = [max(len(row[column]) for row in rows if column < len(row)) for column in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=False))
        )
        for row in rows
    )


def run_compare(
    base: str,
    paths: list[str],
    *,
    other: str | None = None,
    general: list[str] | None = None,
    text_field: str = "text",
    as_json: bool = False,
) -> int:
    """The CLI's entry point: measure, print a table (or JSON with --json)."""
    domain_texts = open_corpus(paths, text_field=text_field, side="domain")
    general_texts = None if not general else open_corpus(general, text_field=text_field, side="general")
    named = {"base": load_tokenizer(base, "--base")}
    if other is not None:
        named["other"] = load_tokenizer(other, "--other")
    report = compare_tokenizers(named, domain_texts, general_texts)
    report["inputs"] = {"base": base, "other": other, "domain": paths, "general": general}
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    sides = ["domain"] + (["general"] if general_texts is not None else [])
    print("dapt tokenizer compare: " + "; ".join(_measured_on(side, report) for side in sides))
    print(f"base = {base}" + (f", other = {other}" if other else ""))
    print(render_table(report))
    return 0


def _measured_on(side: str, report: dict[str, Any]) -> str:
    """What a side was measured on: "domain 300 documents, 13,800 words (all 300 read)" or a sample of them."""
    measured, sample = report["tokenizers"]["base"][side], report["sample"][side]
    read = sample["documents_read"]
    if sample["documents"] == read:
        where = f"all {read:,} read"
    else:
        where = f"a seeded random sample of the {read:,} read, up to {sample['max_words']:,} words"
    return f"{side} {measured['documents']:,} documents, {measured['words']:,} words ({where})"
