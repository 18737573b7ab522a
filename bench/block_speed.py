"""Time per document of each per-document curation block on the demo's corpus, and the verdicts to check a
speed-up against: a faster block must give every document the same verdict (reason and detail).

The corpus is what the demo's curate stage reads (SciPy's and the standard library's docstrings of >= 200
characters). Each block judges every document (not only the survivors of the blocks before it), at its
default settings and, for the Gopher and C4 blocks, at the published thresholds too (more rules fire there);
the verdict recorded is every rule a document fails (`failures`), not only the first. Normalisation's
output is recorded as a digest of each text.

    python bench/block_speed.py --save before.json        # on the code before a change
    python bench/block_speed.py --compare before.json     # after: exits 1 naming a document that differs

Writes bench/results/block_speed.json (µs per document per block).

Timings alternate between the blocks for `--rounds` rounds and report each block's median; they are
wall-clock and noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from dapt.data.curate import LengthFilter, QualityFilter, normalize_text
from dapt.data.langid import LanguageFilter
from dapt.data.mojibake import fix_mojibake
from dapt.data.pii import PiiScrubber
from dapt.data.pydocs import docstring_documents
from dapt.data.quality import C4Filter, GopherQualityFilter, GopherRepetitionFilter

sys.path.insert(0, str(Path(__file__).parent))
from quality_rules import C4_PUBLISHED, GOPHER_PUBLISHED, REPETITION_PUBLISHED  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "block_speed.json"


def raw_texts() -> list[str]:
    return [
        doc["text"]
        for package in ("scipy", "stdlib")
        for doc in docstring_documents(package, source=package, min_chars=200)
    ]


def verdict_of(block) -> Callable[[str], str]:
    if hasattr(block, "failures"):
        return lambda text: repr([(r.reason, r.detail) for r in block.failures(text)])
    return lambda text: repr(None if (r := block.judge("", text)) is None else (r.reason, r.detail))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", type=Path, help="write the verdicts here")
    parser.add_argument("--compare", type=Path, help="check the verdicts against this file")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    raw = raw_texts()
    scrubber = PiiScrubber()
    texts = [scrubber(normalize_text(text)) for text in raw]
    print(f"{len(texts)} documents")
    # block name -> (one document's work, the documents it reads)
    timed: dict[str, tuple[Callable[[str], object], list[str]]] = {
        "mojibake": (fix_mojibake, raw),
        "normalize": (normalize_text, raw),
        **{
            block.name: (lambda text, block=block: block.judge("", text), texts)
            for block in (
                LengthFilter(),
                QualityFilter(),
                LanguageFilter(),
                GopherQualityFilter(),
                GopherRepetitionFilter(),
                C4Filter(),
            )
        },
    }
    checked: dict[str, Callable[[str], str]] = {
        "normalize": lambda text: hashlib.sha1(normalize_text(text).encode()).hexdigest(),
        "length": verdict_of(LengthFilter()),
        "quality": verdict_of(QualityFilter()),
        "language": verdict_of(LanguageFilter()),
        "gopher_quality": verdict_of(GopherQualityFilter()),
        "gopher_repetition": verdict_of(GopherRepetitionFilter()),
        "c4": verdict_of(C4Filter()),
        "gopher_quality_published": verdict_of(GopherQualityFilter(**GOPHER_PUBLISHED)),
        "gopher_repetition_published": verdict_of(GopherRepetitionFilter(**REPETITION_PUBLISHED)),
        "c4_published": verdict_of(C4Filter(**C4_PUBLISHED)),
    }
    verdicts = {
        name: [check(text) for text in (raw if name == "normalize" else texts)] for name, check in checked.items()
    }

    timed["language"][0](texts[0])  # loads the model before timing
    runs: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.rounds):
        for name, (work, inputs) in timed.items():
            started = time.perf_counter()
            for text in inputs:
                work(text)
            runs[name].append((time.perf_counter() - started) / len(inputs) * 1e6)
    medians = {name: round(statistics.median(times), 1) for name, times in runs.items()}
    for name, times in runs.items():
        print(f"{name:20s} {medians[name]:8.1f} µs/doc  (runs {', '.join(f'{t:.1f}' for t in times)})")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
                "documents": len(texts),
                "microseconds_per_document": medians,
                "note": f"median of {args.rounds} alternating rounds on a shared 2-core machine under load: noisy",
                "headline": f"block_speed: µs per document on {len(texts)} SciPy+stdlib docstrings: "
                + ", ".join(f"{name} {value:.0f}" for name, value in medians.items()),
            },
            indent=2,
        )
        + "\n"
    )

    if args.save:
        args.save.write_text(json.dumps(verdicts))
    if args.compare:
        reference = json.loads(args.compare.read_text())
        for name, expected in reference.items():
            for index, (old, new) in enumerate(zip(expected, verdicts[name], strict=True)):
                if old != new:
                    sys.exit(f"{name}: document {index} differs:\n  before {old}\n  after  {new}")
        print(f"same verdicts for all {len(texts)} documents in {len(reference)} blocks/settings")


if __name__ == "__main__":
    main()
