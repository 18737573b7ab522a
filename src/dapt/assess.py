"""dapt assess: is domain-adaptive pretraining worth it here? Answered before any compute is spent.

Reads a domain corpus (files, globs, or a dapt artifact folder holding `documents.parquet`), optionally a
base model and a sample of general text, and writes `assess.md` (for people) and `assess.json` (for
tools) with:

- size: documents, tokens (the base's tokenizer, else whitespace words), and the share of documents that
  curation would drop as exact duplicates (of normalised text) or near-duplicates (MinHash + LSH);
- vocabulary saturation: Heaps' law V = K·N^β fitted on growing prefixes of the corpus, the current rate
  of new words per 1k words and the corpus size at which it falls below a threshold;
- domain gap (with a base): the base's perplexity on domain vs general text, and tokenizer fertility
  (tokens per word, share of words split into ≥ 3 tokens) on both;
- cost: training FLOPs (6·N·D plus PaLM's attention term), GPU-hours at an assumed MFU, money at an
  assumed hourly price, for one and three epochs, next to a 7B / 10B-token sanity row;
- a recommendation from the ordered rules below (the first rule that matches decides; a rule whose
  measure is missing, e.g. perplexity without --base, is skipped and the report says so):

| # | when | choice |
|---|---|---|
| 1 | domain tokens < 50,000 | try retrieval / prompting first |
| 2 | domain/general perplexity ≤ 1 | try retrieval / prompting first |
| 3 | domain/general perplexity < 1.1 | fine-tune only |
| 4 | domain tokens < 500,000 | task-adaptive pretraining only |
| 5 | domain/general tokens per word ≥ 1.25 | DAPT + vocabulary extension |
| 6 | otherwise | full DAPT |

The thresholds are the named constants below, each with where its number comes from. Several are
heuristics rather than published results; they are here so the verdict can be argued with.

The corpus is read once, as a stream (files through dapt's ingest readers, an artifact's documents.parquet
batch by batch), so any size fits in memory. That pass counts exactly what is cheap: documents, characters,
whitespace words and exact duplicates (an 8-byte digest and a 4-byte word count per document: 120 MB at 10M
documents). Everything else — the token count with --base, fertility, near-duplicates, vocabulary growth,
perplexity — is measured on a seeded random sample of at most SAMPLE_MAX_DOCUMENTS documents and
SAMPLE_MAX_CHARS characters (`Reservoir`); when the corpus fits in it, the sample is the corpus and every
figure is exact. The report says the sample's size and which figures are estimated from it. Measured here
on 900k documents (189 MB of JSONL, no --base): 583 MB peak RSS, 265 MB of it the imports, the same as on
a third of that corpus; reading the corpus into lists, as assess did before, took 1,140 MB and grew with it.

How close the estimates come (tests/unit/test_assess.py measures a 10% sample against the whole of a corpus of
two kinds of text, one after the other): the token count (a ratio estimator: the corpus's characters times the
sample's tokens per character) and the fertility within 2%; Heaps' law, fitted on the sample's words and
extrapolated to the corpus's size, β within 0.12 and the discovery rate within 60% (an extrapolation, and
this corpus's curve is not one power law). The near-duplicate share of a sample is a lower bound: a pair
is found only when both of its documents were sampled.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dapt.artifacts import atomic_write_text
from dapt.config import BaseConfig
from dapt.data.corpus_texts import SEED, iter_texts, sample_order
from dapt.data.curate import curation_options, document_blocks, normalize_text
from dapt.data.executor import SourceCounts, heavy_drops
from dapt.data.near_dup import NearDuplicateFinder
from dapt.errors import ConfigError
from dapt.tokenizer.fertility import FERTILITY_SAMPLE_WORDS, SPLIT_WORD_TOKENS, tokenizer_fertility
from dapt.train.throughput import PEAK_TFLOPS, training_flops_per_token

# -- thresholds of the recommendation rules ------------------------------------------------------------------

# Below this, continued pretraining has too little to learn from. It is about the size of the smallest task
# corpus on which Gururangan et al. 2020 ("Don't Stop Pretraining", Table 5) saw TAPT help (ACL-ARC: 1,688
# citation sentences, roughly 50k tokens). Less text than that fits a retrieval index or a long prompt.
TINY_CORPUS_TOKENS = 50_000
# A practitioner rule of thumb for the least good domain text that gives a measurable DAPT gain. Gururangan et
# al. 2020 used 2-8 billion tokens per domain, so read 500k as a floor, not a target.
MIN_DAPT_TOKENS = 500_000
# Domain perplexity no higher than general perplexity: the base predicts domain text as well as the general
# text it was trained on, so it already knows the domain (e.g. a code model on code docs).
KNOWS_DOMAIN_PPL_RATIO = 1.0
# A heuristic: below a 10% perplexity gap there is little for DAPT to teach. For scale, SmolLM2-135M on
# SciPy's docstrings vs Python's language reference is 16.5 vs 12.6 (ratio 1.30), and 16 steps of DAPT cut
# the domain perplexity by a third (the demo's numbers in the README).
SMALL_GAP_PPL_RATIO = 1.1
# A heuristic: when domain words cost 25% more tokens than general words, the base's tokenizer cuts domain
# terms into pieces (fertility, Rust et al. 2021 "How Good is Your Tokenizer?"), which costs sequence length
# and makes terms harder to learn; adding domain tokens (with embeddings initialised from their pieces) helps.
FERTILITY_GAP_RATIO = 1.25

# -- measurement settings ---------------------------------------------------------------------------------------

# The sample every measurement beyond plain counts is taken on. 50M characters (about 8M words of English,
# 50-200 MB as Python strings) hold what fertility (100k words) and near-dup (up to 10M words) read, 8M
# words of Heaps' law's curve (extrapolated beyond, as any fit is) and far more than perplexity's 16k
# tokens; the sample is tokenised in about 12 s (SmolLM2's tokenizer ran at about 4 MB/s on 2 shared cores:
# SciPy's 5.3 MB of docstrings in 1.3 s). 100k documents bound a corpus of very short ones (each sampled
# document costs about 100 bytes beside its text).
SAMPLE_MAX_CHARS = 50_000_000
SAMPLE_MAX_DOCUMENTS = 100_000
# Per side (domain, general): 32 windows of 512. A 135M model on 2 busy CPU cores scores about 100 tokens/s
# (so --ppl-tokens 4096 for a quick look); a GPU takes seconds.
PPL_TOKENS = 16_384
PPL_SEQ_LEN = 512  # context per window; the same for domain and general so their perplexities compare
# Heaps' law: fit points start at 1k words (the first few hundred words of any text are nearly all new) and
# stop at 20M words (counting ran at about 3M words/s here); the fit is extrapolated beyond.
HEAPS_MIN_WORDS = 1_000
HEAPS_MAX_WORDS = 20_000_000
HEAPS_FIT_POINTS = 30
SATURATION_NEW_WORDS_PER_1K = 1.0  # "saturated": fewer than 1 new word per 1,000 words read
# Near-duplicates are found with curation's own MinHash + LSH finder on up to this many words of documents
# (about 10 s at the 1.7M shingles/s its docstring reports); a bigger corpus is sampled.
NEAR_DUP_MAX_WORDS = 10_000_000

# Words for Heaps' law: lowercased runs of letters and digits, the same words `curate.word_ngrams` uses, so
# "Function," and "function" are one word.
_WORD = re.compile(r"[^\W_]+")

# -- cost assumptions ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuType:
    """A GPU's dense bf16 peak (NVIDIA datasheets, SXM parts; without 2:4 sparsity) and an hourly price."""

    tflops: float
    usd_per_hour: float


# Edit to your hardware and prices. Peaks: the table the training loop's MFU uses (dapt.train.throughput,
# NVIDIA datasheets). Prices: assumed on-demand rates of GPU clouds in 2025 for one GPU; yours differ — pass
# --price-per-hour.
GPUS: dict[str, GpuType] = {
    name: GpuType(tflops=PEAK_TFLOPS[name], usd_per_hour=price)
    for name, price in (("A100", 1.80), ("H100", 2.50), ("H200", 3.50), ("L4", 0.80), ("A10G", 1.00))
}
DEFAULT_GPU = "H100"
# Model FLOPs utilisation: PaLM 540B reached 46% (Chowdhery et al. 2022, Table 3); 40% is a good well-tuned
# run; small models and single GPUs often get less.
DEFAULT_MFU = 0.4
DEFAULT_SEQ_LEN = 2048  # the context continued pretraining usually runs at; enters the attention term
EPOCHS_SHOWN = (1, 3)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP formula needs: parameters N, layers L and width d_model."""

    name: str
    params: float
    layers: int
    d_model: int


# The sanity row: Llama 2 7B's shape (Touvron et al. 2023) on 10B tokens, to set next to the commonly quoted
# "$2k-10k for one 7B run".
REFERENCE_MODEL = ModelShape(name="7B (Llama-2-7B shape)", params=6.74e9, layers=32, d_model=4096)
REFERENCE_TOKENS = 10_000_000_000
# A model given only by its size gets Llama's aspect ratio d_model = 128·L (Llama 7B: 32 × 4096, 13B:
# 40 × 5120); with N ≈ 12·L·d_model² that makes L = (N / (12·128²))^(1/3).
_LLAMA_WIDTH_PER_LAYER = 128


def shape_from_params(params: float) -> ModelShape:
    """A Llama-like shape for a model known only by its parameter count (the attention term needs L and d)."""
    layers = max(1, round((params / (12 * _LLAMA_WIDTH_PER_LAYER**2)) ** (1 / 3)))
    return ModelShape(name=f"{params / 1e9:g}B (Llama-like shape)", params=params, layers=layers, d_model=128 * layers)


def training_flops(shape: ModelShape, tokens: float, seq_len: int) -> float:
    """FLOPs to train on `tokens` tokens: 6·N·D plus PaLM's attention term 12·L·d_model·T per token.

    6·N·D: forward (2 FLOPs per parameter per token) plus backward (4). The attention term (Chowdhery et al.
    2022, appendix B: 12·L·H·Q·T with H·Q = d_model) is the score and value matmuls that parameters do not
    count. N is all parameters: a tied output embedding is a real matmul, counted once.
    """
    return training_flops_per_token(shape.params, shape.layers, shape.d_model, seq_len) * tokens


def gpu_hours(flops: float, gpu: GpuType, mfu: float) -> float:
    return flops / (gpu.tflops * 1e12 * mfu) / 3600


def cost_row(shape: ModelShape, tokens: float, seq_len: int, gpu_name: str, mfu: float, price: float) -> dict:
    flops = training_flops(shape, tokens, seq_len)
    hours = gpu_hours(flops, GPUS[gpu_name], mfu)
    return {
        "model": shape.name,
        "tokens": tokens,
        "flops": flops,
        "gpu": gpu_name,
        "gpu_hours": hours,
        "usd": hours * price,
    }


# -- recommendation --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What the rules look at. None: not measured (no --base, no --general)."""

    domain_tokens: int
    ppl_ratio: float | None = None  # the base's domain perplexity / its general perplexity
    fertility_ratio: float | None = None  # domain tokens per word / general tokens per word
    new_words_per_1k: float | None = None  # Heaps: new words per 1k words at the corpus's size (a note, no rule)
    saturation_new_words_per_1k: float = SATURATION_NEW_WORDS_PER_1K


_OPERATORS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "≤": operator.le, "≥": operator.ge}


@dataclass(frozen=True)
class Rule:
    """One row of the rules table: when `measure op threshold`, recommend `choice`, because `meaning`."""

    choice: str
    measure: str | None  # an Evidence field; None: always matches (the last rule)
    op: str
    threshold: float
    label: str
    meaning: str

    @property
    def when(self) -> str:
        if self.measure is None:
            return "otherwise"
        threshold = f"{self.threshold:,}" if isinstance(self.threshold, int) else f"{self.threshold:g}"
        return f"{self.label} {self.op} {threshold}"


RULES: tuple[Rule, ...] = (
    Rule(
        "try retrieval / prompting first",
        "domain_tokens",
        "<",
        TINY_CORPUS_TOKENS,
        "domain tokens",
        "too little text to move a model's weights measurably; put it in a retrieval index or the prompt",
    ),
    Rule(
        "try retrieval / prompting first",
        "ppl_ratio",
        "≤",
        KNOWS_DOMAIN_PPL_RATIO,
        "domain/general perplexity",
        "the base predicts domain text at least as well as general text: it already knows the domain",
    ),
    Rule(
        "fine-tune only",
        "ppl_ratio",
        "<",
        SMALL_GAP_PPL_RATIO,
        "domain/general perplexity",
        "a small domain gap: the gain is in fine-tuning on the task, not in more pretraining",
    ),
    Rule(
        "task-adaptive pretraining only",
        "domain_tokens",
        "<",
        MIN_DAPT_TOKENS,
        "domain tokens",
        "task-sized, not domain-sized: continue pretraining briefly on this text and the task's unlabelled "
        "inputs (TAPT: about 60x cheaper than DAPT in Gururangan et al. 2020, and often close to its gain)",
    ),
    Rule(
        "DAPT + vocabulary extension",
        "fertility_ratio",
        "≥",
        FERTILITY_GAP_RATIO,
        "domain/general tokens per word",
        "the tokenizer cuts domain words into many pieces; add domain tokens before continued pretraining: set "
        "`vocab: {add: 1000}` in the pipeline YAML (or `--set vocab.add=1000`; `vocab.coverage: 0.05` to size it "
        "by tokens saved instead), or try `dapt tokenizer extend` alone first",
    ),
    Rule(
        "full DAPT",
        None,
        "",
        0,
        "",
        "no rule above matched: enough domain text, a domain gap worth closing, a tokenizer that copes",
    ),
)


def _shown(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"


def recommend(evidence: Evidence) -> dict[str, Any]:
    """The first rule of RULES that matches, and the reasons: what decided, what was checked, what was not."""
    decided: str | None = None
    checked: list[str] = []
    skipped: list[tuple[int, Rule]] = []
    choice = RULES[-1].choice
    for number, rule in enumerate(RULES, start=1):
        if rule.measure is None:
            decided = rule.meaning + (" (provisional: some rules could not be checked)" if skipped else "")
            break
        value = getattr(evidence, rule.measure)
        if value is None:
            skipped.append((number, rule))
        elif _OPERATORS[rule.op](value, rule.threshold):
            choice = rule.choice
            decided = f"{rule.label} {_shown(value)} {rule.op} {_shown(rule.threshold)}: {rule.meaning}"
            break
        else:
            checked.append(f"{rule.label} {_shown(value)}, not {rule.op} {_shown(rule.threshold)}")
    reasons = [decided or RULES[-1].meaning, *checked]
    if skipped:
        labels = ", ".join(dict.fromkeys(rule.label for _, rule in skipped))
        numbers = ", ".join(str(number) for number, _ in skipped)
        reasons.append(f"not measured: {labels} (rules {numbers} skipped; pass --base and --general to check them)")
    rate, threshold = evidence.new_words_per_1k, evidence.saturation_new_words_per_1k
    if rate is not None and rate >= threshold:
        reasons.append(
            f"vocabulary not saturated: {rate:.3g} new words per 1k words (≥ {threshold:g}); "
            "more domain text would still bring new terms"
        )
    elif rate is not None:
        reasons.append(
            f"vocabulary saturated: {rate:.3g} new words per 1k words (< {threshold:g}); more of the same text "
            "adds few new terms — favour quality and breadth over volume"
        )
    return {"choice": choice, "reasons": reasons}


# -- one pass over the corpus: exact counts and a bounded sample ---------------------------------------------------


def text_digest(text: str) -> int:
    """64 bits of BLAKE2b of curation's normalised text (NFC, line endings, trailing spaces, mojibake), so
    equal digests are what `curate`'s exact dedup drops. At 10M documents two different texts share a digest
    with probability about 3·10⁻⁶ (n²/2⁶⁵)."""
    return int.from_bytes(hashlib.blake2b(normalize_text(text).encode(), digest_size=8).digest(), "little")


class DuplicateCounter:
    """Exact duplicates among a stream of documents, counted exactly in 12 bytes a document.

    Each document leaves its 8-byte digest and its 4-byte word count in NumPy arrays, grown a chunk at a time
    (each chunk as large as all before it, up to 1M entries, so the slack stays under 12 MB): 120 MB at 10M
    documents, where a Python set of the digests would take about 10 times more. `counts()` sorts the digests
    once; within a group of equal digests the first in stream order is the copy curation keeps and the others
    are duplicates.
    """

    FIRST_CHUNK = 1 << 10
    LARGEST_CHUNK = 1 << 20

    def __init__(self) -> None:
        self._digests: list[np.ndarray] = []
        self._words: list[np.ndarray] = []
        self._filled = 0  # entries used in the last chunk
        self.documents = 0

    def add(self, digest: int, words: int) -> None:
        if not self._digests or self._filled == len(self._digests[-1]):
            size = min(max(self.FIRST_CHUNK, self.documents), self.LARGEST_CHUNK)
            self._digests.append(np.empty(size, dtype=np.uint64))
            self._words.append(np.empty(size, dtype=np.uint32))
            self._filled = 0
        self._digests[-1][self._filled] = digest
        self._words[-1][self._filled] = min(words, 0xFFFFFFFF)
        self._filled += 1
        self.documents += 1

    def _joined(self, chunks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([*chunks[:-1], chunks[-1][: self._filled]]) if chunks else np.empty(0, np.uint64)

    def counts(self) -> tuple[int, int]:
        """(duplicate documents, their words): every copy after the first of each text."""
        digests = self._joined(self._digests)
        order = np.argsort(digests, kind="stable")  # stable: the first of a group is the first in the stream
        ordered = digests[order]
        duplicate = np.zeros(len(ordered), dtype=bool)
        duplicate[1:] = ordered[1:] == ordered[:-1]
        words = self._joined(self._words)[order]
        return int(duplicate.sum()), int(words[duplicate].sum(dtype=np.int64))


@dataclass(frozen=True)
class SampledDocument:
    position: int  # in the stream, from 0
    text: str
    digest: int


class Reservoir:
    """A seeded random sample of a stream of documents, bounded in documents and in characters.

    Each document draws a random key (seeded: the same stream gives the same sample); the sample is the
    documents with the smallest keys, taken in key order while they fit in `max_documents` and `max_chars`
    (the first always, however long). That is the start of the whole stream shuffled at random, cut where the
    budget ends — what "documents in a seeded random order until N words" means on a list — found in one pass
    with a heap holding only the sample. Once a document has been dropped for the budget, no later document
    with a larger key can enter, so larger keys are skipped without being stored.
    """

    def __init__(self, max_documents: int, max_chars: int, seed: int = SEED) -> None:
        if max_documents < 1 or max_chars < 1:
            raise ConfigError("the sample needs room for at least one document and one character")
        self.max_documents, self.max_chars = max_documents, max_chars
        self._rng = np.random.default_rng(seed)
        self._keys = self._rng.random(4096)
        self._next_key = 0
        self._heap: list[tuple[float, int, str, int]] = []  # (-key, position, text, digest): a max-heap on key
        self._chars = 0
        self._limit = float("inf")  # the smallest key dropped so far: larger keys are never in the sample
        self.offered = 0

    def offer(self, text: str, digest: int) -> None:
        if self._next_key == len(self._keys):
            self._keys, self._next_key = self._rng.random(4096), 0
        key = float(self._keys[self._next_key])
        self._next_key += 1
        position = self.offered
        self.offered += 1
        if key >= self._limit:
            return
        heapq.heappush(self._heap, (-key, position, text, digest))
        self._chars += len(text)
        while len(self._heap) > self.max_documents or (self._chars > self.max_chars and len(self._heap) > 1):
            negative_key, _, dropped, _ = heapq.heappop(self._heap)
            self._chars -= len(dropped)
            self._limit = min(self._limit, -negative_key)

    @property
    def chars(self) -> int:
        return self._chars

    def sample(self) -> list[SampledDocument]:
        """The sampled documents in stream order."""
        in_order = sorted(self._heap, key=operator.itemgetter(1))
        return [SampledDocument(position, text, digest) for _, position, text, digest in in_order]


@dataclass(frozen=True)
class CorpusScan:
    """What one pass over a corpus leaves: exact counts, and a bounded random sample of its documents.

    Figures measured on `sample` (tokens, fertility, near-duplicates, vocabulary growth, perplexity) are
    estimates unless `covers_corpus`; `documents`, `chars`, `words` and the exact duplicates are exact.
    """

    documents: int
    chars: int
    words: int  # whitespace words
    duplicate_documents: int
    duplicate_words: int
    sample: list[str]  # in corpus order
    distinct_sample: list[str]  # the sample without exact copies of an earlier sampled text (normalised)
    sample_chars: int
    sample_words: int

    @property
    def covers_corpus(self) -> bool:
        return len(self.sample) == self.documents


def scan_corpus(
    texts: Iterable[str],
    *,
    max_documents: int = SAMPLE_MAX_DOCUMENTS,
    max_chars: int = SAMPLE_MAX_CHARS,
    seed: int = SEED,
    desc: str = "assess: read",
) -> CorpusScan:
    """One pass over `texts`: exact counts (documents, characters, words, exact duplicates in 12 bytes a
    document) and a seeded `Reservoir` sample of at most `max_documents` documents and `max_chars` characters.

    Memory: the sample, plus 12 bytes per document for the duplicates; the rest of each text is let go as
    soon as it has been counted.
    """
    reservoir = Reservoir(max_documents, max_chars, seed)
    duplicates = DuplicateCounter()
    chars = words = 0
    for text in tqdm(texts, desc=desc, unit="doc", leave=False, delay=1):  # shown from 1 s on: not for a small corpus
        digest = text_digest(text)
        count = len(text.split())
        chars += len(text)
        words += count
        duplicates.add(digest, count)
        reservoir.offer(text, digest)
    duplicate_documents, duplicate_words = duplicates.counts()
    sample = reservoir.sample()
    seen: set[int] = set()
    distinct: list[str] = []
    for document in sample:
        if document.digest not in seen:
            seen.add(document.digest)
            distinct.append(document.text)
    texts_sampled = [document.text for document in sample]
    return CorpusScan(
        documents=duplicates.documents,
        chars=chars,
        words=words,
        duplicate_documents=duplicate_documents,
        duplicate_words=duplicate_words,
        sample=texts_sampled,
        distinct_sample=distinct,
        sample_chars=reservoir.chars,
        sample_words=sum(len(text.split()) for text in texts_sampled),
    )


# -- duplicates ----------------------------------------------------------------------------------------------------


def near_duplicate_share(texts: list[str], *, max_words: int = NEAR_DUP_MAX_WORDS) -> tuple[float, int]:
    """Share of documents that curation's near-dedup would drop, and how many documents were looked at.

    Pass distinct texts, so exact copies are not counted here again. The finder (`dapt.data.near_dup`) puts
    documents whose word-shingle sets have an estimated Jaccard similarity at or above its threshold in one
    cluster and keeps the first. Up to `max_words` words of documents in a seeded random order are checked:
    on all of a corpus that is the share `curate` drops; on a sample it is a lower bound (a document's
    near-duplicate is found only if it was sampled too).
    """
    sample: list[str] = []
    words = 0
    for index in sample_order(len(texts)):
        sample.append(texts[index])
        words += len(texts[index].split())
        if words >= max_words:
            break
    if len(sample) < 2:
        return 0.0, len(sample)
    return len(NearDuplicateFinder().find(sample)) / len(sample), len(sample)


# -- vocabulary saturation (Heaps' law) ------------------------------------------------------------------------


@dataclass(frozen=True)
class HeapsFit:
    """V = K·N^β: distinct words V after N words, fitted by least squares on log V = log K + β·log N."""

    k: float
    beta: float
    words_fitted: int
    points: int

    def new_words_per_1k(self, words: float) -> float:
        """dV/dN = K·β·N^(β−1), per 1,000 words: how many new words the next 1k words bring."""
        return 1000 * self.k * self.beta * words ** (self.beta - 1)

    def words_until(self, new_words_per_1k: float) -> float | None:
        """The corpus size N at which the discovery rate falls to `new_words_per_1k`; None if it never does."""
        if self.beta >= 1 or self.beta <= 0:
            return None
        return (new_words_per_1k / (1000 * self.k * self.beta)) ** (1 / (self.beta - 1))


def vocabulary_growth(texts: list[str], max_words: int = HEAPS_MAX_WORDS) -> tuple[np.ndarray, np.ndarray]:
    """(words seen N, distinct words V) after each document, documents in a seeded random order.

    A random order makes the curve a property of the corpus rather than of its file order (files sorted by
    topic would show a burst of new words at each new topic).
    """
    seen: set[str] = set()
    words_seen, distinct = [], []
    total = 0
    for index in sample_order(len(texts)):
        words = _WORD.findall(texts[index].lower())
        seen.update(words)
        total += len(words)
        words_seen.append(total)
        distinct.append(len(seen))
        if total >= max_words:
            break
    return np.asarray(words_seen, dtype=np.float64), np.asarray(distinct, dtype=np.float64)


def fit_heaps(words_seen: np.ndarray, distinct: np.ndarray) -> HeapsFit | None:
    """Least squares in log-log space on up to HEAPS_FIT_POINTS geometrically spaced prefixes from 1k words.

    Geometric spacing weighs each decade of corpus size equally (evenly spaced points would all sit at the
    large end). None when there are fewer than 3 distinct prefixes past HEAPS_MIN_WORDS.
    """
    if len(words_seen) == 0 or words_seen[-1] <= HEAPS_MIN_WORDS:
        return None
    targets = np.geomspace(HEAPS_MIN_WORDS, words_seen[-1], HEAPS_FIT_POINTS)
    picked = np.unique(np.minimum(np.searchsorted(words_seen, targets), len(words_seen) - 1))
    if len(picked) < 3:
        return None
    beta, log_k = np.polyfit(np.log(words_seen[picked]), np.log(distinct[picked]), 1)
    return HeapsFit(k=float(np.exp(log_k)), beta=float(beta), words_fitted=int(words_seen[-1]), points=len(picked))


# -- tokenizer and base model ---------------------------------------------------------------------------------------


def count_tokens(tokenizer: Any, texts: list[str], batch: int = 256) -> int:
    """Tokens of every text with the tokenizer (no special tokens), batched: the fast tokenizer runs in Rust."""
    total = 0
    for start in tqdm(range(0, len(texts), batch), desc="assess: count tokens", unit="batch", leave=False):
        total += sum(map(len, tokenizer(texts[start : start + batch], add_special_tokens=False)["input_ids"]))
    return total


def corpus_tokens(tokenizer: Any, corpus: CorpusScan) -> tuple[int, int]:
    """(the corpus's tokens, the sample's tokens): exact when the sample is the corpus, else the corpus's
    characters times the sample's tokens per character (a ratio estimator; see the module docstring)."""
    sample_tokens = count_tokens(tokenizer, corpus.sample)
    if corpus.covers_corpus:
        return sample_tokens, sample_tokens
    return round(corpus.chars * sample_tokens / max(corpus.sample_chars, 1)), sample_tokens


def sample_windows(tokenizer: Any, texts: list[str], max_tokens: int, seq_len: int) -> list[Any]:
    """Windows of seq_len + 1 tokens from documents in a seeded random order, packed with end-of-text between.

    Packed as training's shards are (`dapt.data.shards`); the loss is then taken with document masking, as
    the pipeline's evaluation does by default, so each document is scored as if alone and a corpus of short
    documents is not penalised for the unrelated text before each of them.
    Returns [] when the texts hold less than one window of 2 tokens.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for index in sample_order(len(texts)):
        ids += tokenizer(texts[index], add_special_tokens=False)["input_ids"] + eos
        if len(ids) > max_tokens:
            break
    seq_len = min(seq_len, len(ids) - 1)  # a corpus shorter than one window still gives one shorter window
    if seq_len < 1:
        return []
    count = max(1, min(len(ids) - 1, max_tokens) // seq_len)
    flat = torch.tensor(ids, dtype=torch.long)
    return [flat[i * seq_len : i * seq_len + seq_len + 1] for i in range(count)]


def _model_perplexity(model: Any, tokenizer: Any, texts: list[str], max_tokens: int, side: str) -> dict[str, Any]:
    from dapt.train.objectives import mean_lm_loss, perplexity

    limit = getattr(model.config, "max_position_embeddings", None) or PPL_SEQ_LEN
    windows = sample_windows(tokenizer, texts, max_tokens, min(PPL_SEQ_LEN, limit))
    if not windows:
        return {"ppl": None, "loss": None, "tokens": 0}
    # In chunks only to show progress: a mean over chunks weighted by their tokens is the mean over all.
    chunk = 8
    total_loss, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(windows), chunk), desc=f"assess: {side} perplexity", unit="chunk", leave=False):
        part = windows[start : start + chunk]
        tokens = sum(len(window) - 1 for window in part)
        total_loss += mean_lm_loss(model, part, eos_id=tokenizer.eos_token_id) * tokens
        total_tokens += tokens
    loss = total_loss / total_tokens
    return {"ppl": perplexity(loss), "loss": loss, "tokens": total_tokens}


# -- the assessment ---------------------------------------------------------------------------------------------------


def parse_count(text: str) -> float:
    """'135M', '7B', '7e9', '1.5k' → a number (for --params)."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    text = text.strip().replace("_", "").replace(",", "")
    try:
        if text[-1:].upper() in scale:
            return float(text[:-1]) * scale[text[-1].upper()]
        return float(text)
    except ValueError:
        raise ConfigError(f"--params: {text!r} is not a number; write e.g. 7e9, 7B or 135M") from None


# The per-document curation rules are run on at most this many sampled documents (~0.3-1 ms each on 2 cores).
RULE_CHECK_DOCUMENTS = 5_000


def curation_rule_drops(texts: list[str], max_documents: int = RULE_CHECK_DOCUMENTS) -> dict[str, Any]:
    """What curate's per-document rules, at their defaults, would drop of (a seeded sample of) the domain text, and
    the rules that would drop more than `curate.max_rule_drop_share` of it, with the setting to change: a corpus
    unlike the defaults' (a glossary of short entries, tables, code) is caught before a run, not after it."""
    options = curation_options()
    blocks = document_blocks(options)
    checked = [texts[index] for index in sample_order(len(texts))[:max_documents]]
    counts = SourceCounts()
    counts.documents["domain"] = len(checked)
    for number, raw in enumerate(checked):
        text = normalize_text(raw, fix_mojibake=options["fix_mojibake"])
        for block in blocks:
            rejection = block(str(number), text)
            if rejection is not None:  # the first rule to drop a document is the one curate names
                counts.dropped["domain", block.name, rejection.reason] += 1
                break
    dropped = Counter()
    for (_, _, reason), count in counts.dropped.items():
        dropped[reason] += count
    return {
        "checked_documents": len(checked),
        "dropped_by_reason": dict(sorted(dropped.items())),
        "heavy_drops": heavy_drops(counts, options["max_rule_drop_share"]) if checked else [],
    }


def assess_corpus(
    domain_paths: list[str],
    *,
    base: str | None = None,
    general_paths: list[str] | None = None,
    text_field: str = "text",
    gpu: str = DEFAULT_GPU,
    mfu: float = DEFAULT_MFU,
    price_per_hour: float | None = None,
    params: float | None = None,
    seq_len: int = DEFAULT_SEQ_LEN,
    ppl_tokens: int = PPL_TOKENS,
    saturation_new_words_per_1k: float = SATURATION_NEW_WORDS_PER_1K,
    sample_documents: int = SAMPLE_MAX_DOCUMENTS,
    sample_chars: int = SAMPLE_MAX_CHARS,
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure the corpus (and the base on it) and recommend; the dict is what assess.json holds.

    The corpus is read once, as a stream: its documents, characters, words and exact duplicates are counted
    exactly; everything else is measured on a seeded random sample of at most `sample_documents` documents
    and `sample_chars` characters (`Reservoir`), which the report names. Memory is that sample plus 12
    bytes per document.
    """
    gpu_name = _check_options(gpu, mfu, params, seq_len, ppl_tokens)
    base_dir = Path.cwd() if base_dir is None else base_dir
    price = GPUS[gpu_name].usd_per_hour if price_per_hour is None else price_per_hour

    # -- the corpus: one pass for size and duplicates, a sample for the rest -----------------------------------
    notes: list[str] = []
    corpus = scan_corpus(
        iter_texts(domain_paths, side="domain", text_field=text_field, base_dir=base_dir, notes=notes),
        max_documents=sample_documents,
        max_chars=sample_chars,
    )
    general: CorpusScan | None = None
    if general_paths:
        general = scan_corpus(
            iter_texts(general_paths, side="general", text_field=text_field, base_dir=base_dir, notes=notes),
            max_documents=sample_documents,
            max_chars=sample_chars,
            desc="assess: read general",
        )
    loaded = None
    if base is not None:  # loaded before the measurements, so a wrong --base fails in seconds
        from dapt.model.load import load_original_base  # transformers: seconds to import, only with --base

        loaded = load_original_base(BaseConfig(model=base))
    report = _corpus_report(corpus, general, notes, sample_documents=sample_documents, sample_chars=sample_chars)
    report["inputs"] = {"domain": domain_paths, "general": general_paths or [], "base": base}
    report["heaps"] = _vocabulary_saturation(corpus, saturation_new_words_per_1k, notes)

    # -- the base: tokens, fertility, perplexity on domain vs general -----------------------------------------
    shape: ModelShape | None = None
    if loaded is not None:
        shape = _measure_base(report, loaded, base, corpus, general, ppl_tokens)
        del loaded  # the model's memory is freed before the rest
    elif general is not None:
        notes.append("--general is only used with --base (for the perplexity and fertility comparison)")

    # -- cost --------------------------------------------------------------------------------------------------
    if params is not None:
        shape = shape_from_params(params)
    report["cost"] = _cost_report(shape, report["tokens"], gpu_name=gpu_name, mfu=mfu, price=price, seq_len=seq_len)

    # -- the verdict -------------------------------------------------------------------------------------------
    evidence = Evidence(
        domain_tokens=int(report["tokens"]),
        ppl_ratio=report["ppl_ratio"],
        fertility_ratio=(report["fertility"] or {}).get("ratio"),
        new_words_per_1k=report["heaps"]["new_words_per_1k"] if report["heaps"] else None,
        saturation_new_words_per_1k=saturation_new_words_per_1k,
    )
    report["recommendation"] = recommend(evidence)
    report["rules"] = [{"choice": rule.choice, "when": rule.when, "meaning": rule.meaning} for rule in RULES]
    return report


def _check_options(gpu: str, mfu: float, params: float | None, seq_len: int, ppl_tokens: int) -> str:
    """The GPU's name as GPUS spells it; a ConfigError naming the option for any value out of range."""
    gpu_name = {name.lower(): name for name in GPUS}.get(gpu.lower())
    if gpu_name is None:
        raise ConfigError(f"--gpu: unknown GPU type {gpu!r}; known: {', '.join(GPUS)} (edit dapt.assess.GPUS to add)")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu: {mfu} is not a fraction in (0, 1]; 0.4 is typical for well-tuned training")
    if params is not None and params <= 0:
        raise ConfigError(f"--params: {params:g} must be positive")
    if seq_len < 1 or ppl_tokens < 1:
        raise ConfigError("--seq-len and --ppl-tokens must be positive")
    return gpu_name


def _corpus_report(
    corpus: CorpusScan, general: CorpusScan | None, notes: list[str], *, sample_documents: int, sample_chars: int
) -> dict[str, Any]:
    """The report's measurements of the corpus itself: size, sample, duplicates, what curation's rules would drop;
    the base's measurements start empty (no --base). Notes on the sample and on heavy rule drops go to `notes`."""
    texts, words = corpus.sample, corpus.words
    near_share, near_sample = near_duplicate_share(corpus.distinct_sample)
    finder = NearDuplicateFinder()  # its settings, for the report's definition
    distinct_documents = corpus.documents - corpus.duplicate_documents
    report: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": None,
        "documents": corpus.documents,
        "chars": corpus.chars,
        "words": words,
        "tokens": words,
        "tokens_counted_with": "whitespace words (no --base: a subword tokenizer gives more tokens than words)",
        "tokens_exact": True,
        "sample": {
            "documents": len(texts),
            "chars": corpus.sample_chars,
            "words": corpus.sample_words,
            "covers_corpus": corpus.covers_corpus,
            "max_documents": sample_documents,
            "max_chars": sample_chars,
            "seed": SEED,
            "general_documents": None if general is None else len(general.sample),
            "measured_on_it": "tokens with --base (estimated: corpus characters × the sample's tokens per "
            "character), tokenizer fertility, near-duplicates, vocabulary growth, perplexity; documents, "
            "characters, words and exact duplicates are counted on the whole corpus",
        },
        "duplicates": {
            "exact_documents": corpus.duplicate_documents,
            "exact_share": corpus.duplicate_documents / corpus.documents,
            "exact_words_share": corpus.duplicate_words / max(words, 1),
            "near_share": near_share,
            "near_checked_documents": near_sample,
            "near_covers_corpus": near_sample == distinct_documents,
            "near_definition": (
                f"documents whose word {finder.shingle}-gram sets have an estimated Jaccard ≥ {finder.threshold} "
                f"with another's (MinHash, {finder.num_perm} permutations, LSH), counting all but the first of "
                "each cluster — what curation's near-dedup drops; exact duplicates not counted again"
            ),
        },
        "curation_rules": curation_rule_drops(texts),
        "heaps": None,
        "domain_ppl": None,
        "general_ppl": None,
        "ppl_ratio": None,
        "fertility": None,
        "notes": notes,
    }
    for drop in report["curation_rules"]["heavy_drops"]:
        notes.append(
            f"curation at its defaults (on {report['curation_rules']['checked_documents']:,} sampled documents): "
            + drop["message"]
        )
    if not corpus.covers_corpus:
        notes.append(
            f"measured on a seeded random sample of {len(texts):,} of the {corpus.documents:,} documents "
            f"({corpus.sample_chars / max(corpus.chars, 1):.1%} of the characters): tokens, fertility, "
            "near-duplicates, vocabulary growth and perplexity are estimates from it; the counts of documents, "
            "words and exact duplicates are exact"
        )
    return report


def _vocabulary_saturation(
    corpus: CorpusScan, saturation_new_words_per_1k: float, notes: list[str]
) -> dict[str, Any] | None:
    """Heaps' law fitted on the sample and read at the corpus's size; None (and a note) when too few words."""
    words_seen, distinct_words = vocabulary_growth(corpus.sample)
    heaps = fit_heaps(words_seen, distinct_words)
    if heaps is None:
        notes.append(
            f"vocabulary saturation not fitted: {corpus.sample_words:,} words is too few (needs well over "
            f"{HEAPS_MIN_WORDS:,})"
        )
        return None
    # Heaps' law counts _WORD words; the corpus's size in them, from its whitespace words and the sample's
    # ratio of the two (exact when the sample is the corpus).
    sample_heaps_words = sum(len(_WORD.findall(text.lower())) for text in corpus.sample)
    corpus_heaps_words = corpus.words * sample_heaps_words / max(corpus.sample_words, 1)
    return {
        **asdict(heaps),
        "distinct_words": int(distinct_words[-1]),
        "corpus_words": round(corpus_heaps_words),
        "new_words_per_1k": heaps.new_words_per_1k(corpus_heaps_words),
        "threshold_new_words_per_1k": saturation_new_words_per_1k,
        "saturation_words": heaps.words_until(saturation_new_words_per_1k),
    }


def _measure_base(
    report: dict[str, Any],
    loaded: tuple[Any, Any, str],
    base: str | None,
    corpus: CorpusScan,
    general: CorpusScan | None,
    ppl_tokens: int,
) -> ModelShape:
    """Fill the report's tokens (the base's tokenizer), fertility and perplexities, domain and general; the base's
    shape, for the cost."""
    from dapt.model.load import parameter_count  # transformers: seconds to import, only with --base

    model, tokenizer, origin = loaded
    notes = report["notes"]
    domain_fertility = tokenizer_fertility(tokenizer, corpus.sample)
    report["tokens"], report["sample"]["tokens"] = corpus_tokens(tokenizer, corpus)
    report["tokens_exact"] = corpus.covers_corpus
    report["tokens_counted_with"] = f"the base's tokenizer ({origin})"
    fertility: dict[str, Any] = {
        "domain": {**asdict(domain_fertility), "tokens_per_word": domain_fertility.tokens_per_word}
    }
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    domain = _model_perplexity(model, tokenizer, corpus.sample, ppl_tokens, "domain")
    report["domain_ppl"], report["domain_ppl_tokens"] = domain["ppl"], domain["tokens"]
    if general is not None:
        general_fertility = tokenizer_fertility(tokenizer, general.sample)
        fertility["general"] = {**asdict(general_fertility), "tokens_per_word": general_fertility.tokens_per_word}
        fertility["ratio"] = domain_fertility.tokens_per_word / general_fertility.tokens_per_word
        general_ppl = _model_perplexity(model, tokenizer, general.sample, ppl_tokens, "general")
        report["general_ppl"], report["general_ppl_tokens"] = general_ppl["ppl"], general_ppl["tokens"]
        if domain["ppl"] is not None and general_ppl["ppl"] is not None:
            report["ppl_ratio"] = domain["ppl"] / general_ppl["ppl"]
    else:
        notes.append("no --general text: the domain gap (perplexity and fertility ratios) was not measured")
    report["fertility"] = fertility
    return ModelShape(
        name=f"the base ({base})",
        params=float(parameter_count(model)),
        layers=int(model.config.num_hidden_layers),
        d_model=int(model.config.hidden_size),
    )


def _cost_report(
    shape: ModelShape | None, tokens: float, *, gpu_name: str, mfu: float, price: float, seq_len: int
) -> dict[str, Any]:
    """FLOPs, GPU-hours and money for one and three epochs of the corpus, on each GPU type, and the 7B sanity row;
    without a shape (no --base, no --params), for the 7B reference model."""
    model_note = ""
    if shape is None:
        shape = REFERENCE_MODEL
        model_note = "no --base or --params: costed for the 7B reference model"
    return {
        "assumptions": {
            "gpu": gpu_name,
            "gpu_tflops_bf16_dense": GPUS[gpu_name].tflops,
            "mfu": mfu,
            "usd_per_gpu_hour": price,
            "seq_len": seq_len,
            "model": asdict(shape),
            "note": model_note,
        },
        "runs": [
            {"epochs": epochs, **cost_row(shape, tokens * epochs, seq_len, gpu_name, mfu, price)}
            for epochs in EPOCHS_SHOWN
        ],
        "one_epoch_by_gpu": [
            cost_row(shape, tokens, seq_len, name, mfu, price if name == gpu_name else GPUS[name].usd_per_hour)
            for name in GPUS
        ],
        "sanity": cost_row(REFERENCE_MODEL, REFERENCE_TOKENS, seq_len, gpu_name, mfu, price),
    }


# -- writing it down ---------------------------------------------------------------------------------------------


def _count(value: float) -> str:
    """1234 → 1,234; 1.3e6 → 1.30M: counts people can read at a glance."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:,.0f}"


def _money(usd: float) -> str:
    if usd < 0.01:
        return "< $0.01"
    return f"${usd:,.0f}" if usd >= 10 else f"${usd:,.2f}"


def _number(value: float | None, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def _sample_sentence(report: dict[str, Any]) -> str:
    """What the figures were measured on: the whole corpus, or a sample of a size it names."""
    sample = report["sample"]
    if sample["covers_corpus"]:
        return (
            f"Every figure is measured on the whole corpus (it fits in the sample of at most "
            f"{sample['max_documents']:,} documents and {_count(sample['max_chars'])} characters)."
        )
    return (
        f"Documents, characters, words and exact duplicates are counted on the whole corpus. Tokens, fertility, "
        f"near-duplicates, vocabulary growth and perplexity are estimated from a seeded random sample of "
        f"{sample['documents']:,} documents ({_count(sample['chars'])} characters, "
        f"{sample['chars'] / max(report['chars'], 1):.1%} of the corpus; at most {sample['max_documents']:,} "
        f"documents and {_count(sample['max_chars'])} characters)."
    )


def render_markdown(report: dict[str, Any]) -> str:
    """assess.md: the verdict first, then each measurement with what it means."""
    recommendation = report["recommendation"]
    lines = [
        "# Is domain-adaptive pretraining worth it here?",
        "",
        f"**Recommendation: {recommendation['choice']}**",
        "",
        *(f"- {reason}" for reason in recommendation["reasons"]),
        "",
        *_corpus_lines(report),
        "",
        *_guidance_lines(report),
        "",
        *_domain_gap_lines(report),
        "",
        *_cost_lines(report["cost"]),
        "",
        "## The rules",
        "",
        "Checked in order; the first that matches decides. A rule whose measure is missing is skipped.",
        "",
        "| # | when | choice | why |",
        "|---|---|---|---|",
        *(
            f"| {number} | {rule['when']} | {rule['choice']} | {rule['meaning']} |"
            for number, rule in enumerate(report["rules"], start=1)
        ),
    ]
    if report["notes"]:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def _corpus_lines(report: dict[str, Any]) -> list[str]:
    """assess.md's corpus section: size, duplicates, and what the figures were measured on."""
    duplicates = report["duplicates"]
    return [
        "## The corpus",
        "",
        "| | |",
        "|---|---|",
        f"| documents | {report['documents']:,} |",
        f"| words (whitespace) | {report['words']:,} |",
        f"| characters | {report['chars']:,} |",
        f"| tokens | {report['tokens']:,}{'' if report['tokens_exact'] else ' (estimated from the sample)'} "
        f"— {report['tokens_counted_with']} |",
        f"| exact duplicates (normalised text) | {duplicates['exact_documents']:,} documents "
        f"({duplicates['exact_share']:.1%}; {duplicates['exact_words_share']:.1%} of words) |",
        f"| near-duplicates | {duplicates['near_share']:.1%} of "
        + (
            "the distinct documents |"
            if duplicates["near_covers_corpus"]
            else f"{duplicates['near_checked_documents']:,} sampled distinct documents (a lower bound) |"
        ),
        "",
        _sample_sentence(report),
        "",
        f"Near-duplicates: {duplicates['near_definition']}."
        + (
            ""
            if duplicates["near_covers_corpus"]
            else " Checked on a random sample: a near-duplicate outside the sample is missed, so the corpus has more."
        ),
    ]


def _guidance_lines(report: dict[str, Any]) -> list[str]:
    """assess.md's comparison with published guidance: the corpus's size, and its vocabulary's saturation."""
    lines = [
        "## Against published guidance",
        "",
        f"- Size: {report['tokens']:,} tokens "
        + ("≥" if report["tokens"] >= MIN_DAPT_TOKENS else "<")
        + f" {MIN_DAPT_TOKENS:,}, the rule-of-thumb least amount of good domain text for a measurable DAPT gain "
        "(Gururangan et al. 2020 used 2–8B tokens per domain).",
    ]
    heaps = report["heaps"]
    if heaps:
        saturation = heaps["saturation_words"]
        lines += [
            f"- Vocabulary (Heaps' law V = K·N^β, fitted on {heaps['points']} prefixes up to "
            f"{heaps['words_fitted']:,} words): K = {heaps['k']:.3g}, β = {heaps['beta']:.3f}; "
            f"{heaps['distinct_words']:,} distinct words in them. At the corpus's size "
            f"({_count(heaps['corpus_words'])} words) each 1,000 more words bring "
            f"{heaps['new_words_per_1k']:.2f} new ones (dV/dN = K·β·N^(β−1)).",
            "- "
            + (
                f"Below {heaps['threshold_new_words_per_1k']:g} new word per 1k words from about "
                f"{_count(saturation)} words" + (" — already reached." if saturation <= heaps["corpus_words"] else ".")
                if saturation is not None
                else "β ≥ 1: the vocabulary does not saturate at any size (not natural-language text?)."
            ),
        ]
    return lines


def _domain_gap_lines(report: dict[str, Any]) -> list[str]:
    """assess.md's domain gap: the base's perplexity and its tokenizer's fertility, domain against general."""
    lines = ["## Domain gap (the base on domain vs general text)", ""]
    fertility = report["fertility"]
    if fertility is None:
        lines.append("Not measured: pass `--base MODEL` (and `--general PATH` for the comparison).")
    else:
        general = fertility.get("general") or {}

        def split(side: dict) -> str:
            return "—" if side.get("split_share") is None else f"{side['split_share']:.1%}"

        lines += [
            "| | domain | general | domain / general |",
            "|---|---|---|---|",
            f"| perplexity | {_number(report['domain_ppl'], '.2f')} | {_number(report['general_ppl'], '.2f')} "
            f"| {_number(report['ppl_ratio'], '.2f')} |",
            f"| tokens per word (fertility) | {fertility['domain']['tokens_per_word']:.2f} "
            f"| {_number(general.get('tokens_per_word'), '.2f')} | {_number(fertility.get('ratio'), '.2f')} |",
            f"| words cut into ≥ {SPLIT_WORD_TOKENS} tokens | {split(fertility['domain'])} | {split(general)} | |",
            "",
            f"Perplexity on up to {report.get('domain_ppl_tokens', 0):,} domain and "
            f"{report.get('general_ppl_tokens', 0):,} general tokens in windows of up to {PPL_SEQ_LEN}; "
            f"fertility on up to {FERTILITY_SAMPLE_WORDS:,} whitespace words of each. The ratios are only as "
            "good as the general sample: use text like what the base was pretrained on (or the replay text you "
            "would mix in), with documents of similar length — short documents have more hard-to-predict starts.",
        ]
    return lines


def _cost_lines(cost: dict[str, Any]) -> list[str]:
    """assess.md's cost of continued pretraining: the assumptions, the runs, the sanity row, each GPU type."""
    assumptions = cost["assumptions"]
    model = assumptions["model"]
    lines = [
        "## Cost of continued pretraining",
        "",
        f"FLOPs = 6·N·D + 12·L·d_model·T·D (PaLM appendix B) with N = {_count(model['params'])} parameters, "
        f"L = {model['layers']}, d_model = {model['d_model']}, T = {assumptions['seq_len']} — {model['name']}. "
        f"GPU-hours at {assumptions['mfu']:.0%} MFU on {assumptions['gpu']} "
        f"({assumptions['gpu_tflops_bf16_dense']:g} dense bf16 TFLOP/s), "
        f"{_money(assumptions['usd_per_gpu_hour'])} per GPU-hour (assumed; `--price-per-hour`)."
        + (f" {assumptions['note'][0].upper()}{assumptions['note'][1:]}." if assumptions["note"] else ""),
        "",
        "| run | tokens | FLOPs | GPU-hours | cost |",
        "|---|---|---|---|---|",
    ]
    for run in cost["runs"]:
        lines.append(
            f"| {run['epochs']} epoch{'s' if run['epochs'] > 1 else ''} of this corpus | {_count(run['tokens'])} "
            f"| {run['flops']:.2e} | {run['gpu_hours']:.3g} | {_money(run['usd'])} |"
        )
    sanity = cost["sanity"]
    lines += [
        f"| sanity: {sanity['model']} on 10B tokens | {_count(sanity['tokens'])} | {sanity['flops']:.2e} "
        f"| {sanity['gpu_hours']:.3g} | {_money(sanity['usd'])} |",
        "",
        'The sanity row is there to compare with the commonly quoted "$2k–10k for one 7B run".',
        "",
        "One epoch on each GPU type in the table (peak dense bf16 TFLOP/s from NVIDIA's datasheets; hourly "
        "prices are assumptions — edit `dapt.assess.GPUS`):",
        "",
        "| GPU | TFLOP/s | GPU-hours | cost |",
        "|---|---|---|---|",
        *(
            f"| {row['gpu']} | {GPUS[row['gpu']].tflops:g} | {row['gpu_hours']:.3g} | {_money(row['usd'])} |"
            for row in cost["one_epoch_by_gpu"]
        ),
    ]
    return lines


def write_assessment(report: dict[str, Any], out: Path) -> None:
    """assess.json and assess.md in `out`, each written atomically."""
    atomic_write_text(out / "assess.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "assess.md", render_markdown(report))


def verdict(report: dict[str, Any], out: Path) -> str:
    """The few lines printed on screen: size, gap, cost, the recommendation and its reasons."""
    lines = [
        f"dapt assess: {report['documents']:,} documents, {_count(report['tokens'])} tokens "
        f"({'tokenizer' if report['inputs']['base'] else 'whitespace words'}), "
        f"duplicates: {report['duplicates']['exact_share']:.1%} exact, {report['duplicates']['near_share']:.1%} near"
    ]
    if report["domain_ppl"] is not None:
        gap = f"base perplexity: domain {report['domain_ppl']:.2f}"
        if report["ppl_ratio"] is not None:
            gap += f" vs general {report['general_ppl']:.2f} (×{report['ppl_ratio']:.2f})"
            gap += f"; tokens per word ×{report['fertility']['ratio']:.2f}"
        lines.append("  " + gap)
    one_epoch = report["cost"]["runs"][0]
    lines.append(
        f"  one epoch: {one_epoch['flops']:.2e} FLOPs ≈ {one_epoch['gpu_hours']:.3g} {one_epoch['gpu']}-hours "
        f"≈ {_money(one_epoch['usd'])} ({report['cost']['assumptions']['model']['name']})"
    )
    lines.append(f"recommendation: {report['recommendation']['choice']}")
    lines += [f"  - {reason}" for reason in report["recommendation"]["reasons"]]
    lines.append(f"report: {out / 'assess.md'} (and assess.json)")
    return "\n".join(lines)


def run_assess(domain_paths: list[str], *, out: Path, **options: Any) -> int:
    """The CLI's entry point: measure, write assess.md / assess.json, print the verdict."""
    report = assess_corpus(domain_paths, **options)
    write_assessment(report, out)
    print(verdict(report, out))
    return 0
