"""What each Gopher / C4 rule drops, alone, on the demo's documentation corpus, at the published threshold
and at dapt's default; and the time each block takes per document.

The corpus is what the demo's curate stage reads: SciPy's and the standard library's docstrings of >= 200
characters, normalised and PII-scrubbed as curate does. These are documents the demo wants kept (prose
with code examples, parameter lists, doctests), so every drop here is a cost of the rule on this domain.
The counts are the numbers written next to the defaults in `dapt.data.quality`.

    python bench/quality_rules.py        # ≈ 1 minute on 2 cores
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from datetime import date
from pathlib import Path

from dapt.data.curate import normalize_text
from dapt.data.pii import PiiScrubber
from dapt.data.pydocs import docstring_documents
from dapt.data.quality import C4Filter, GopherQualityFilter, GopherRepetitionFilter

RESULTS = Path(__file__).parent / "results" / "quality_rules.json"

# (block, rule field, published value, off value)
GOPHER_OFF = {
    "min_words": None,
    "max_words": None,
    "min_mean_word_chars": None,
    "max_mean_word_chars": None,
    "max_symbol_word_ratio": None,
    "max_bullet_lines_ratio": None,
    "max_ellipsis_lines_ratio": None,
    "min_alpha_words_ratio": None,
    "min_stop_words": None,
}
GOPHER_PUBLISHED = {
    "min_words": 50,
    "max_words": 100_000,
    "min_mean_word_chars": 3.0,
    "max_mean_word_chars": 10.0,
    "max_symbol_word_ratio": 0.1,
    "max_bullet_lines_ratio": 0.9,
    "max_ellipsis_lines_ratio": 0.3,
    "min_alpha_words_ratio": 0.8,
    "min_stop_words": 2,
}
REPETITION_OFF = {
    "max_dup_line_fraction": None,
    "max_dup_paragraph_fraction": None,
    "max_dup_line_char_fraction": None,
    "max_dup_paragraph_char_fraction": None,
    "max_top_ngram_char_fraction": {},
    "max_dup_ngram_char_fraction": {},
}
REPETITION_PUBLISHED = {
    "max_dup_line_fraction": 0.3,
    "max_dup_paragraph_fraction": 0.3,
    "max_dup_line_char_fraction": 0.2,
    "max_dup_paragraph_char_fraction": 0.2,
    "max_top_ngram_char_fraction": {2: 0.20, 3: 0.18, 4: 0.16},
    "max_dup_ngram_char_fraction": {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
}
C4_OFF = {
    "lorem_ipsum": False,
    "curly_bracket": False,
    "max_javascript_lines_ratio": None,
    "max_policy_lines_ratio": None,
    "min_terminal_punct_lines_ratio": None,
    "min_sentences": None,
}
C4_PUBLISHED = {  # C4's line rules as FineWeb's / a notice-page share
    "lorem_ipsum": True,
    "curly_bracket": True,
    "max_javascript_lines_ratio": 0.5,
    "max_policy_lines_ratio": 0.5,
    "min_terminal_punct_lines_ratio": 0.12,
    "min_sentences": 3,
}


def demo_texts() -> dict[str, list[str]]:
    scrubber = PiiScrubber()
    return {
        package: [
            scrubber(normalize_text(doc["text"])) for doc in docstring_documents(package, source=package, min_chars=200)
        ]
        for package in ("scipy", "stdlib")
    }


def drops(block, texts: list[str]) -> tuple[int, list[str]]:
    dropped = [text for text in texts if block.judge("", text) is not None]
    return len(dropped), [text[:200] for text in dropped[:3]]


def main() -> None:
    corpora = demo_texts()
    texts = corpora["scipy"] + corpora["stdlib"]
    print(f"{len(corpora['scipy'])} SciPy + {len(corpora['stdlib'])} stdlib docstrings")
    rules: dict[str, dict] = {}
    for block_class, off, published in (
        (GopherQualityFilter, GOPHER_OFF, GOPHER_PUBLISHED),
        (GopherRepetitionFilter, REPETITION_OFF, REPETITION_PUBLISHED),
        (C4Filter, C4_OFF, C4_PUBLISHED),
    ):
        default = block_class()
        for rule, published_value in published.items():
            default_value = getattr(default, rule)
            row = {"published": published_value, "default": default_value}
            for which, value in (("published", published_value), ("default", default_value)):
                if which == "default" and value == published_value:
                    row["dropped_at_default"] = row["dropped_at_published"]
                    continue
                count, examples = drops(block_class(**{**off, rule: value}), texts)
                row[f"dropped_at_{which}"] = count
                if which == "published":
                    row["examples_at_published"] = examples
            rules[f"{default.name}.{rule}"] = row
            print(
                f"{default.name + '.' + rule:55s} published {str(published_value):>10.10s} drops "
                f"{row['dropped_at_published']:5d}   default {str(default_value):>10.10s} drops "
                f"{row['dropped_at_default']:5d}"
            )
    timings = {}
    all_dropped = Counter()
    for block in (GopherQualityFilter(), GopherRepetitionFilter(), C4Filter()):
        started = time.perf_counter()
        for text in texts:
            rejection = block.judge("", text)
            if rejection is not None:
                all_dropped[rejection.reason] += 1
        timings[block.name] = (time.perf_counter() - started) / len(texts) * 1e6
    default_drops = sum(all_dropped.values())
    result = {
        "date": date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "documents": {package: len(docs) for package, docs in corpora.items()},
        "rules": rules,
        "defaults_dropped_by_reason": dict(all_dropped),
        "microseconds_per_document": timings,
        "note": "timings on a shared 2-core machine under load: noisy",
    }
    result["headline"] = (
        f"quality_rules: on {len(texts)} SciPy+stdlib docstrings the defaults drop {default_drops} "
        f"({100 * default_drops / len(texts):.1f}%); Gopher+C4 at the published thresholds would drop "
        f"{sum(1 for text in texts if any(b.judge('', text) for b in published_blocks()))}; "
        f"{sum(timings.values()):.0f} µs/doc"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(result["headline"])


def published_blocks():
    return [
        GopherQualityFilter(**GOPHER_PUBLISHED),
        GopherRepetitionFilter(**REPETITION_PUBLISHED),
        C4Filter(**C4_PUBLISHED),
    ]


if __name__ == "__main__":
    main()
