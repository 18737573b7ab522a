"""Near-duplicate detection: dapt's MinHash + LSH vs datasketch's MinHashLSH, quality and speed.

The corpus is SciPy's docstrings (real technical text with its own templated near-duplicates) plus
planted near-duplicates of some of them, made by controlled edits: adjacent word swaps, word insertions,
word deletions (each at several rates, so that some copies fall below the threshold and must NOT be
flagged) and reordered paragraphs. The corpus is shuffled, so a copy can come before its original.

Ground truth is exact: the Jaccard similarity of every pair's sets of 5-word shingles (one sparse
matrix product), not the planting, so SciPy's own templated docstrings count too. A document is a true
near-duplicate when some document before it in input order has exact Jaccard >= the threshold with it;
that is the document a curator wants dropped. Each engine drops the non-first members of its clusters:
precision is the share of dropped documents that are true near-duplicates, recall the share of true
near-duplicates dropped. Planted copies are also reported by edit, with their exact Jaccard.

Both engines get the same shingles (lowercased words, 5 in a row), the same threshold, candidate
verification by estimated Jaccard and the same keep-the-first clustering. datasketch is used as its
documentation shows: `MinHash.bulk` over each document's shingles encoded as bytes with its default 128
permutations, `MinHashLSH` (which picks its own bands × rows for the threshold: 9 × 13 at 0.8), `insert`
then `query`; the speed ratio is against that. A second datasketch row uses dapt's signature length and
bands × rows (512, 64 × 8: one-permutation hashing makes dapt's length cheap, datasketch's costs in
proportion), which separates the engines from the choice of settings. dapt is timed
end to end from texts (`NearDuplicateFinder.find`); datasketch from texts as well (shingling included).
rensa (a Rust MinHash, when installed) computes the signatures from the same shingles as datasketch and
hands them to dapt's LSH, verification and clustering: that row compares MinHash engines alone.
Runs alternate (dapt, datasketch, dapt, ...) and the median time counts.

    python bench/near_dup_quality.py                  # ≈ 1-2 minutes on 2 cores
    python bench/near_dup_quality.py --copies 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import scipy.sparse

from dapt.curation_defaults import DEFAULT_BANDS, DEFAULT_NUM_PERM, DEFAULT_SHINGLE
from dapt.data.curate import normalize_text
from dapt.data.near_dup import PRIME, NearDuplicateFinder
from dapt.data.pydocs import docstring_documents

RESULTS = Path(__file__).parent / "results" / "near_dup_quality.json"
_WORD = re.compile(r"[^\W_]+")  # dapt's shingle words: lowercased letters and digits
EDIT_RATES = (0.005, 0.01, 0.02, 0.03, 0.05)  # edits per word: copies from Jaccard ~0.95 down to ~0.6


def scipy_texts() -> list[str]:
    """SciPy's docstrings of >= 200 characters, normalized as curate does, exact duplicates removed."""
    texts = (normalize_text(doc["text"]) for doc in docstring_documents("scipy", source="scipy", min_chars=200))
    return list(dict.fromkeys(texts))


def edit_words(text: str, kind: str, rate: float, rng: random.Random, vocabulary: list[str]) -> str:
    """`text` with about rate × words edits of `kind`; whitespace between the words is kept."""
    tokens = re.split(r"(\s+)", text)  # words at even indices, the whitespace between them at odd ones
    words, spaces = tokens[0::2], tokens[1::2] + [""]
    edits = max(1, round(rate * len(words)))
    for _ in range(edits):
        position = rng.randrange(len(words) - 1)
        if kind == "swap":
            words[position], words[position + 1] = words[position + 1], words[position]
        elif kind == "insert":
            words.insert(position, rng.choice(vocabulary))
            spaces.insert(position, " ")
        elif kind == "delete":
            del words[position], spaces[position]
    return "".join(word + space for word, space in zip(words, spaces, strict=True))


def reorder_paragraphs(text: str, rng: random.Random) -> str | None:
    paragraphs = text.split("\n\n")
    if len(paragraphs) < 3:
        return None
    order = list(range(len(paragraphs)))
    while order == sorted(order):
        rng.shuffle(order)
    return "\n\n".join(paragraphs[i] for i in order)


def plant(originals: list[str], copies: int, seed: int) -> tuple[list[str], list[dict]]:
    """originals + `copies` edited copies of randomly chosen originals, shuffled; and what was planted."""
    rng = random.Random(seed)
    vocabulary = sorted({word for text in originals[:200] for word in text.split()})
    candidates = [i for i, text in enumerate(originals) if len(text.split()) >= 60]
    planted = []
    texts = list(originals)
    for number, source in enumerate(rng.sample(candidates, min(copies, len(candidates)))):
        kind = ("swap", "insert", "delete", "reorder")[number % 4]
        rate = EDIT_RATES[(number // 4) % len(EDIT_RATES)]
        copy = reorder_paragraphs(originals[source], rng) if kind == "reorder" else None
        if copy is None:  # too few paragraphs to reorder: edit words instead
            kind = ("swap", "insert", "delete")[number % 3] if kind == "reorder" else kind
            copy = edit_words(originals[source], kind, rate, rng, vocabulary)
        if copy == originals[source] or copy in texts:
            continue
        planted.append(
            {"original": source, "copy": len(texts), "edit": kind, "rate": None if kind == "reorder" else rate}
        )
        texts.append(copy)
    order = list(range(len(texts)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    for record in planted:
        record["original"], record["copy"] = position[record["original"]], position[record["copy"]]
    return [texts[i] for i in order], planted


def shingle_sets(texts: list[str], k: int) -> list[set[str]]:
    """The same shingles as dapt's (a text shorter than k words is one shingle), as strings."""
    result = []
    for text in texts:
        words = _WORD.findall(text.lower())
        if len(words) < k:
            result.append({" ".join(words)} if words else set())
        else:
            result.append({" ".join(words[i : i + k]) for i in range(len(words) - k + 1)})
    return result


def exact_jaccard_pairs(shingles: list[set[str]], threshold: float) -> dict[tuple[int, int], float]:
    """Every pair (i < j) whose exact Jaccard is >= threshold, with the value: one sparse product."""
    index: dict[str, int] = {}
    rows, columns = [], []
    for row, doc_shingles in enumerate(shingles):
        for shingle in doc_shingles:
            rows.append(row)
            columns.append(index.setdefault(shingle, len(index)))
    matrix = scipy.sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, columns)), shape=(len(shingles), len(index))
    )
    intersections = scipy.sparse.triu(matrix @ matrix.T, k=1).tocoo()
    sizes = np.array([len(s) for s in shingles])
    jaccard = intersections.data / (sizes[intersections.row] + sizes[intersections.col] - intersections.data)
    keep = jaccard >= threshold
    return {
        (int(i), int(j)): float(value)
        for i, j, value in zip(intersections.row[keep], intersections.col[keep], jaccard[keep], strict=True)
    }


def exact_jaccard(left: set[str], right: set[str]) -> float:
    return len(left & right) / len(left | right) if left | right else 0.0


def keep_first_clusters(n_docs: int, pairs: list[tuple[int, int]]) -> set[int]:
    """Union-find over pairs; the documents that are not the first (lowest index) of their cluster."""
    parent = list(range(n_docs))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        root_i, root_j = root(i), root(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    return {i for i in range(n_docs) if root(i) != i}


def run_dapt(texts: list[str], args: argparse.Namespace) -> tuple[set[int], float]:
    started = time.perf_counter()
    finder = NearDuplicateFinder(
        shingle=args.shingle, num_perm=args.num_perm, bands=args.bands, threshold=args.threshold
    )
    dropped = {duplicate.index for duplicate in finder.find(texts)}
    return dropped, time.perf_counter() - started


def run_rensa(texts: list[str], args: argparse.Namespace) -> tuple[set[int], float]:
    """rensa's MinHash (Rust, `RMinHash`) over the same shingles as datasketch's, then dapt's LSH, verification
    and clustering: what changes from dapt is the engine that computes the signatures."""
    from rensa import RMinHash

    started = time.perf_counter()
    signatures = np.full((len(texts), args.num_perm), PRIME, dtype=np.uint32)  # PRIME: no shingles
    for i, doc in enumerate(shingle_sets(texts, args.shingle)):
        if doc:
            minhash = RMinHash(args.num_perm, args.seed)
            minhash.update(list(doc))
            signatures[i] = minhash.digest()
    finder = NearDuplicateFinder(
        shingle=args.shingle, num_perm=args.num_perm, bands=args.bands, threshold=args.threshold
    )
    dropped = {duplicate.index for duplicate in finder.find_in_signatures(signatures)}
    return dropped, time.perf_counter() - started


def run_datasketch(
    texts: list[str], args: argparse.Namespace, num_perm: int, params: tuple[int, int] | None = None
) -> tuple[set[int], float, tuple[int, int]]:
    """datasketch with `num_perm` permutations and its own choice of bands × rows for the threshold, or `params`."""
    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    shingles = [[shingle.encode() for shingle in doc] for doc in shingle_sets(texts, args.shingle)]
    minhashes = MinHash.bulk(shingles, num_perm=num_perm)
    lsh = MinHashLSH(threshold=args.threshold, num_perm=num_perm, params=params)
    for i, minhash in enumerate(minhashes):
        if shingles[i]:
            lsh.insert(i, minhash)
    verified = []
    for i, minhash in enumerate(minhashes):
        if not shingles[i]:
            continue
        for j in lsh.query(minhash):
            if j > i and minhash.jaccard(minhashes[j]) >= args.threshold - 1e-9:
                verified.append((i, j))
    dropped = keep_first_clusters(len(texts), verified)
    return dropped, time.perf_counter() - started, (lsh.b, lsh.r)


def scores(dropped: set[int], truth: set[int]) -> dict[str, float | int]:
    true_positives = len(dropped & truth)
    precision = true_positives / len(dropped) if dropped else 1.0
    recall = true_positives / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "dropped": len(dropped),
        "false_positives": len(dropped - truth),
        "false_negatives": len(truth - dropped),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=1200, help="planted near-duplicates")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each engine (median counts)")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--shingle", type=int, default=DEFAULT_SHINGLE)
    parser.add_argument("--num-perm", type=int, default=DEFAULT_NUM_PERM)
    parser.add_argument("--bands", type=int, default=DEFAULT_BANDS)
    parser.add_argument(
        "--datasketch-num-perm", type=int, default=128, help="datasketch's permutations (128: its default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    originals = scipy_texts()
    texts, planted = plant(originals, args.copies, args.seed)
    shingles = shingle_sets(texts, args.shingle)
    started = time.perf_counter()
    true_pairs = exact_jaccard_pairs(shingles, args.threshold - 1e-9)
    truth = {j for _, j in true_pairs}  # has an earlier document at or above the threshold
    print(
        f"{len(originals)} SciPy docstrings + {len(planted)} planted copies = {len(texts)} documents, "
        f"{sum(map(len, texts)) / 1e6:.1f} MB; {len(true_pairs)} pairs with exact Jaccard >= {args.threshold}, "
        f"{len(truth)} true near-duplicates (ground truth in {time.perf_counter() - started:.1f} s)"
    )

    try:
        import datasketch

        datasketch_version = getattr(datasketch, "__version__", "?")
    except ImportError:
        datasketch_version = None
        print("datasketch is not installed (pip install datasketch): measuring dapt alone")

    # datasketch twice: with the bands × rows it picks for the threshold (what a user gets), and with
    # dapt's, which separates the engines' speed and accuracy from the choice of the LSH curve.
    same_bands = f"datasketch_{args.num_perm}_{args.bands}x{args.num_perm // args.bands}"
    try:
        import rensa

        rensa_version = getattr(rensa, "__version__", "?")
    except ImportError:
        rensa_version = None
        print("rensa is not installed (pip install rensa): not measured")
    times: dict[str, list[float]] = {"dapt": [], "datasketch": [], same_bands: [], "rensa_dapt_lsh": []}
    dropped: dict[str, set[int]] = {}
    datasketch_bands_rows = None
    for round_number in range(args.rounds):
        dropped["dapt"], seconds = run_dapt(texts, args)
        times["dapt"].append(seconds)
        if datasketch_version is not None:
            dropped["datasketch"], seconds, datasketch_bands_rows = run_datasketch(
                texts, args, args.datasketch_num_perm
            )
            times["datasketch"].append(seconds)
            dropped[same_bands], seconds, _ = run_datasketch(
                texts, args, args.num_perm, (args.bands, args.num_perm // args.bands)
            )
            times[same_bands].append(seconds)
        if rensa_version is not None:
            dropped["rensa_dapt_lsh"], seconds = run_rensa(texts, args)
            times["rensa_dapt_lsh"].append(seconds)
        print(f"round {round_number + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v))

    engines = [name for name in times if times[name]]
    results = {}
    for name in engines:
        median = statistics.median(times[name])
        by_edit: dict[str, Counter] = {}
        for record in planted:
            label = record["edit"] if record["rate"] is None else f"{record['edit']} {record['rate']:.1%}"
            jaccard = exact_jaccard(shingles[record["original"]], shingles[record["copy"]])
            later = max(record["original"], record["copy"])
            counts = by_edit.setdefault(label, Counter())
            counts["copies"] += 1
            counts["jaccard_sum"] += jaccard
            counts["true"] += later in truth
            counts["found"] += later in dropped[name] and later in truth
            counts["flagged_below_threshold"] += later in dropped[name] and later not in truth
        results[name] = {
            **scores(dropped[name], truth),
            "seconds_median": round(median, 3),
            "seconds": [round(t, 3) for t in times[name]],
            "docs_per_second": round(len(texts) / median),
            "planted_by_edit": {
                label: {
                    "copies": c["copies"],
                    "mean_exact_jaccard": round(c["jaccard_sum"] / c["copies"], 3),
                    "at_or_above_threshold": c["true"],
                    "found": c["found"],
                    "flagged_below_threshold": c["flagged_below_threshold"],
                }
                for label, c in sorted(by_edit.items())
            },
        }
    ratio = (
        results["dapt"]["docs_per_second"] / results["datasketch"]["docs_per_second"]
        if "datasketch" in results
        else None
    )
    record = {
        "benchmark": "near_dup_quality",
        "date": date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor(),
        },
        "corpus": {
            "originals": len(originals),
            "planted": len(planted),
            "documents": len(texts),
            "megabytes": round(sum(map(len, texts)) / 1e6, 2),
            "true_pairs": len(true_pairs),
            "true_near_duplicates": len(truth),
        },
        "settings": {
            "threshold": args.threshold,
            "shingle": args.shingle,
            "num_perm": args.num_perm,
            "datasketch_num_perm": args.datasketch_num_perm,
            "dapt_bands_rows": [args.bands, args.num_perm // args.bands],
            "datasketch_bands_rows": list(datasketch_bands_rows) if datasketch_bands_rows else None,
            "datasketch_version": datasketch_version,
            "rensa_version": rensa_version,
            "seed": args.seed,
            "rounds": args.rounds,
        },
        "results": results,
        "speed_ratio": round(ratio, 2) if ratio else None,
    }
    record["headline"] = headline(results, ratio).removeprefix("near_dup_quality: ")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")

    print("\n| engine | precision | recall | F1 | false pos. | false neg. | seconds | docs/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in engines:
        r = results[name]
        print(
            f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['false_positives']} | "
            f"{r['false_negatives']} | {r['seconds_median']:.2f} | {r['docs_per_second']} |"
        )
    print(f"\nplanted copies found / at or above {args.threshold} (flagged below it), by edit:")
    print("| edit | copies | mean exact Jaccard | " + " | ".join(engines) + " |")
    print("|---|---|---|" + "---|" * len(engines))
    for label, row in results["dapt"]["planted_by_edit"].items():
        cells = [
            f"{results[n]['planted_by_edit'][label]['found']}/{row['at_or_above_threshold']} "
            f"({results[n]['planted_by_edit'][label]['flagged_below_threshold']})"
            for n in engines
        ]
        print(f"| {label} | {row['copies']} | {row['mean_exact_jaccard']:.3f} | " + " | ".join(cells) + " |")
    print(headline(results, ratio))


def headline(results: dict, ratio: float | None) -> str:
    dapt = results["dapt"]
    if "datasketch" not in results:
        return (
            f"near_dup_quality: dapt F1 {dapt['f1']:.2f} at {dapt['docs_per_second']} docs/s, datasketch not installed"
        )
    sketch = results["datasketch"]
    rensa = results.get("rensa_dapt_lsh")
    rensa_part = (
        f"rensa signatures + dapt LSH F1 {rensa['f1']:.2f} at {rensa['docs_per_second']} docs/s, " if rensa else ""
    )
    return (
        f"near_dup_quality: dapt F1 {dapt['f1']:.2f} at {dapt['docs_per_second']} docs/s, {rensa_part}"
        f"datasketch F1 {sketch['f1']:.2f} at {sketch['docs_per_second']} docs/s, speed ratio {ratio:.1f}"
    )


if __name__ == "__main__":
    main()
