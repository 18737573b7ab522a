"""`dapt tokenizer extend`: add domain tokens to a base's tokenizer and model, ChipNeMo's way.

The pipeline's `extend-vocab` stage (`vocab:` in the YAML) runs the same recipe on the curated domain text.

The recipe (Liu et al. 2023, "ChipNeMo: Domain-Adapted LLMs for Chip Design"):

1. train a BPE tokenizer on the domain corpus (with the base's own word splitting, so its tokens are units
   the base's tokenizer could hold);
2. keep its tokens that the base's vocabulary lacks;
3. rank them by the base tokens they save on the domain corpus: frequency × (base pieces − 1) (here: per
   vocabulary slot, see `select_tokens`);
4. add the top K (`--add K`: at most K, intermediates included), or as many as it takes for the estimated
   domain token count to fall by a share X (`--coverage X`);
5. give each new token an embedding row: the mean of the base's rows of the pieces the base tokenizer cuts
   it into (input embeddings, and output embeddings too when they are not tied), so it starts as the model's
   own reading of the same text; pad the embedding table to a multiple of 64 rows (the vocabulary matmuls
   run faster on such shapes: nanoGPT pads GPT-2's 50,257 tokens to 50,304 "for efficiency").

How a token is added decides whether the extension is correct. Not as a Hugging Face "added token": those
are matched in the raw text before the BPE runs, so in byte-level form ("Ġscipy") they never match real
text (which holds " scipy"), and in text form they override the BPE everywhere, even inside words where the
base had a longer token (an added "ation" would cut the base's "Ġinformation" in two). Instead each new
token becomes a BPE merge appended after all of the base's merges. BPE applies merges in rank order, so the
base's merges all run first and a new merge only ever joins two pieces of the base's own segmentation:

- text in which no new merge fires gets exactly the base's ids; the old embedding rows are untouched, so
  the extended model's logits on it are the base's;
- no text takes more tokens than with the base (each merge that fires removes one);
- decoding is the base's byte-level decoding: decode(encode(s)) == s for every string.

A merge joins two tokens, so a token the base cuts into n pieces needs n − 1 merges and n − 2 intermediate
tokens (e.g. "Ġinterpol" on the way from "Ġinter" + "pol" + "ate" to "Ġinterpolate"). Intermediates count
against K; the split is chosen to need the fewest new ones, preferring ones the domain tokenizer learned
too. A string the base already has can never be an intermediate: a merge producing it would change how the
base's own text is encoded.

The domain text is streamed, never held: `extend_base` reads it four times (base token counts and the
fertility sample; the domain tokenizer's training; its token counts; the extended tokenizer's counts), each pass
one batch at a time, so memory is the word counts, the id counts and a bounded sample, whatever the corpus size.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dapt.artifacts import atomic_write_text
from dapt.data.corpus_texts import WordSample, with_progress
from dapt.errors import ConfigError, DataError
from dapt.model.byte_level import BYTE_DECODER, has_type
from dapt.tokenizer.compare import MEASURE_MAX_WORDS, check_model_spec, measure_documents
from dapt.tokenizer.train import byte_level_bpe, open_corpus

# The domain tokenizer only proposes candidates; its size bounds how many there are. 32k is Llama 2's whole
# vocabulary (ChipNeMo trained theirs to extend it); on SciPy's 5 MB of docstrings it took ~10 s on 2 cores.
DOMAIN_VOCAB_SIZE = 32_000
DEFAULT_ADD = 1_000  # when neither --add nor --coverage is given
PAD_MULTIPLE = 64
# Documents per call into the Rust tokenizer: enough to run in parallel, few enough to bound memory. Its
# encodings cost ~150 bytes a token (ids, offsets, masks, the token strings): with a byte-level base (a token a
# character) a batch of 1M characters peaked at +160 MB RSS here, one of 1,000 long docstrings (2.2M) at +300 MB.
ENCODE_BATCH = 1_000
ENCODE_BATCH_CHARS = 1_000_000
DIGIT = re.compile("[0-9]")


def token_text(token: str) -> str | None:
    """The text a byte-level token stands for ("Ġscipy" → " scipy"); None when its bytes are not whole UTF-8
    characters (a token may hold half of an emoji)."""
    try:
        return bytes(BYTE_DECODER[char] for char in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return None


def check_extendable(tokenizer: PreTrainedTokenizerBase, base: str, where: str | None = None) -> dict[str, Any]:
    """The base tokenizer's `tokenizers` JSON, once it is known to be a byte-level BPE this module can extend.

    Errors start with `where` (default "--base BASE", the CLI's option).
    """
    where = where or f"--base {base}"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{where}: its tokenizer is a slow (Python) tokenizer; extension needs a fast one")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or not has_type(spec.get("pre_tokenizer"), "ByteLevel"):
        raise ConfigError(
            f"{where}: its tokenizer is a {model.get('type')} model without byte-level pre-tokenization; "
            "extension supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM, Mistral Nemo, ...), "
            "not SentencePiece ones (Llama 2, Mistral 7B)"
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
        raise ConfigError(f"{where}: BPE with subword prefixes/suffixes or dropout is not supported")
    return spec


# -- candidates ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A domain token the base lacks: `pieces` are the base tokens it is cut into."""

    token: str
    pieces: tuple[str, ...]
    frequency: int  # occurrences in the domain tokenizer's encoding of the corpus

    @property
    def savings(self) -> int:
        """Base tokens saved on the domain corpus if every occurrence becomes one token."""
        return self.frequency * (len(self.pieces) - 1)


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    """`texts` in lists of ENCODE_BATCH documents or ENCODE_BATCH_CHARS characters, whichever comes first."""
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) == ENCODE_BATCH or chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def count_ids(tokenizer: Tokenizer, texts: Iterable[str]) -> np.ndarray:
    """How often each id occurs in the tokenizer's encoding of `texts` (no special tokens), read batch by batch."""
    counts = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for batch in _batches(texts):
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray(encoding.ids, dtype=np.int64)
            counts += np.bincount(ids, minlength=len(counts))[: len(counts)]
    return counts


def splits_digits(tokenizer: Tokenizer) -> bool:
    """Whether the base keeps every digit a token of its own (SmolLM2 and LLaMA 1/2 do): its BPE has merged
    tokens, but none holds a digit. (A base with no merges at all says nothing either way.)"""
    special = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    merged = [
        token for token in tokenizer.get_vocab(with_added_tokens=False) if len(token) > 1 and token not in special
    ]
    return bool(merged) and not any(DIGIT.search(token) for token in merged)


def domain_candidates(
    base_spec: dict[str, Any], texts: Iterable[str], domain_vocab_size: int, documents: int | None = None
) -> list[Candidate]:
    """Step 1-3: train the domain tokenizer; its tokens the base lacks, most savings first.

    `texts` is read twice (to train, then to count the domain tokenizer's tokens); `documents`, when known, is
    how many it holds (for the progress lines' ETA).
    """
    base = Tokenizer.from_str(json.dumps(base_spec))
    domain, trainer = byte_level_bpe(domain_vocab_size, pre_tokenizer_from=base)
    if splits_digits(base):
        # Keep the base's deliberate choice (LLaMA's too, Touvron et al. 2023): no new token joins a digit to
        # anything. Without this, on SciPy's docs " 0", " 1", ... and "70710678" (from 0.70710678) were the
        # top picks, crowding out the domain's words.
        domain.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), domain.pre_tokenizer]
        )
    domain.train_from_iterator(with_progress(texts, "extend: train the domain tokenizer", documents), trainer)
    frequency = count_ids(domain, with_progress(texts, "extend: count the domain tokenizer's tokens", documents))
    base_vocab = base.get_vocab(with_added_tokens=True)
    candidates = []
    for token, index in domain.get_vocab().items():
        if token in base_vocab or frequency[index] == 0:
            continue
        pieces = tuple(piece.value for piece in base.model.tokenize(token))
        if "".join(pieces) != token:  # the base lacks one of its bytes and drops it (SmolLM2 has no 0x04, 0xF1…)
            continue
        candidates.append(Candidate(token=token, pieces=pieces, frequency=int(frequency[index])))
    return sorted(candidates, key=lambda candidate: (-candidate.savings, candidate.token))


# -- turning tokens into merges ---------------------------------------------------------------------------------


@dataclass
class MergePlan:
    """The new tokens and the merges that build them, in the order they are appended to the base's."""

    base_vocab: set[str]
    domain_vocab: set[str]
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # new token → the merge that first built it
    merges: dict[tuple[str, str], None] = field(default_factory=dict)  # an ordered set

    def cheapest(self, pieces: tuple[str, ...]) -> list[tuple[str, str]] | None:
        """The merges (children first) that build "".join(pieces) from the pieces with the fewest new tokens.

        Dynamic programming over spans: a span of 2+ pieces is one merge of a split into two sub-spans; it
        costs (new tokens, new tokens the domain tokenizer does not have). None when every way needs an
        intermediate the base already has.
        """
        count = len(pieces)
        best: dict[tuple[int, int], tuple[tuple[int, int], list[tuple[str, str]]] | None] = {
            (start, start + 1): ((0, 0), []) for start in range(count)
        }
        for length in range(2, count + 1):
            for start in range(count - length + 1):
                end = start + length
                joined = "".join(pieces[start:end])
                best[(start, end)] = None
                if joined in self.base_vocab:
                    continue
                own = (0, 0) if joined in self.tokens else (1, int(joined not in self.domain_vocab))
                for split in range(start + 1, end):
                    left, right = best[(start, split)], best[(split, end)]
                    if left is None or right is None:
                        continue
                    cost = (left[0][0] + right[0][0] + own[0], left[0][1] + right[0][1] + own[1])
                    current = best[(start, end)]
                    if current is None or cost < current[0]:
                        merge = ("".join(pieces[start:split]), "".join(pieces[split:end]))
                        best[(start, end)] = (cost, [*left[1], *right[1], merge])
        found = best[(0, count)]
        return None if found is None else found[1]

    def new_tokens(self, merges: list[tuple[str, str]]) -> list[str]:
        return list(dict.fromkeys(left + right for left, right in merges if left + right not in self.tokens))

    def add(self, merges: list[tuple[str, str]]) -> None:
        for left, right in merges:
            self.tokens.setdefault(left + right, (left, right))
            self.merges[(left, right)] = None


@dataclass
class Selection:
    plan: MergePlan
    chosen: list[Candidate]
    estimated_savings: int
    unbuildable: int  # candidates no merge chain could build without reusing a base token


def select_tokens(
    candidates: list[Candidate],
    base_vocab: set[str],
    domain_vocab: set[str],
    *,
    add: int | None = None,
    coverage: float | None = None,
    base_tokens: int = 0,
) -> Selection:
    """Step 4: the best candidates while they fit: K new tokens in all, or the coverage target reached.

    "Best" is savings per vocabulary slot taken — the token and the intermediates its merge chain still
    needs. For a token the base cuts in two (no intermediate) that is the recipe's frequency × (pieces − 1);
    for longer ones it stops a rare 13-piece table border from buying 11 intermediates ahead of 11
    two-piece domain words. Greedy and lazy: a candidate's chain is re-planned when it reaches the top, and it
    is taken if it still beats the next one (slots only get cheaper as tokens are added, so a stale score is
    a lower bound and the order is approximate).
    """
    plan = MergePlan(base_vocab=base_vocab, domain_vocab=domain_vocab)
    chosen: list[Candidate] = []
    saved = unbuildable = 0
    target = None if coverage is None else coverage * base_tokens

    def score(candidate: Candidate) -> tuple[float, list[tuple[str, str]], int] | None:
        merges = plan.cheapest(candidate.pieces)
        if merges is None:
            return None
        slots = len(plan.new_tokens(merges))
        return candidate.savings / max(slots, 1), merges, slots

    heap: list[tuple[float, int, int]] = []  # (−score, −savings, position): ties go to more savings, then order
    for position, candidate in enumerate(candidates):
        scored = score(candidate)
        if scored is None:
            unbuildable += 1
        else:
            heapq.heappush(heap, (-scored[0], -candidate.savings, position))
    while heap:
        if (add is not None and len(plan.tokens) >= add) or (target is not None and saved >= target):
            break
        _, _, position = heapq.heappop(heap)
        candidate = candidates[position]
        scored = score(candidate)
        assert scored is not None  # adding tokens never makes a chain impossible
        value, merges, slots = scored
        if heap and value < -heap[0][0]:
            heapq.heappush(heap, (-value, -candidate.savings, position))  # stale: the next one is better now
            continue
        if add is not None and len(plan.tokens) + slots > add:
            continue  # its chain needs more slots than K has left; a shorter token may still fit
        plan.add(merges)
        chosen.append(candidate)
        saved += candidate.savings
    return Selection(plan=plan, chosen=chosen, estimated_savings=saved, unbuildable=unbuildable)


# -- the extended tokenizer and model ----------------------------------------------------------------------------


def extended_tokenizer_spec(base_spec: dict[str, Any], plan: MergePlan) -> tuple[dict[str, Any], dict[str, int]]:
    """The base's `tokenizers` JSON with the new tokens appended to the BPE vocabulary and merges.

    Added tokens (the special ones) are also written into the BPE vocabulary under their own ids, as most
    byte-level tokenizers already have them: `tokenizers` renumbers added tokens whose ids fall in a gap of
    the model's vocabulary, which would move `<|endoftext|>` onto a new token.
    """
    spec = json.loads(json.dumps(base_spec))
    vocab: dict[str, int] = spec["model"]["vocab"]
    for added in spec.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    next_id = max([*vocab.values(), *(added["id"] for added in spec.get("added_tokens", []))]) + 1
    new_ids = {}
    for token in plan.tokens:
        vocab[token] = new_ids[token] = next_id
        next_id += 1
    merges = spec["model"]["merges"]
    as_text = bool(merges) and isinstance(merges[0], str)  # older tokenizer.json files write "a b"
    merges += [f"{left} {right}" if as_text else [left, right] for left, right in plan.merges]
    return spec, new_ids


def build_tokenizer(base: PreTrainedTokenizerBase, spec: dict[str, Any], new_ids: dict[str, int]) -> Any:
    """The base's HF tokenizer (class, special tokens, chat template) around the extended `tokenizers` JSON."""
    with tempfile.TemporaryDirectory() as folder:
        base.save_pretrained(folder)
        (Path(folder) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        extended = AutoTokenizer.from_pretrained(folder)
    old_vocab, vocab = base.get_vocab(), extended.get_vocab()
    moved = [token for token, index in old_vocab.items() if vocab.get(token) != index]
    lost = [token for token, index in new_ids.items() if vocab.get(token) != index]
    if moved or lost:  # a guard against a tokenizer class that rebuilds its vocabulary on load
        raise ConfigError(
            f"the extended tokenizer ({type(extended).__name__}) did not keep the ids it was given "
            f"(moved: {moved[:5]}, missing: {lost[:5]}); this base's tokenizer class cannot be extended here"
        )
    return extended


def _mean_rows(weight: torch.Tensor, pieces: list[list[int]]) -> torch.Tensor:
    """Row i = the mean of weight's rows pieces[i]. weight: (rows, width) → (len(pieces), width)."""
    return torch.stack([weight[ids].mean(dim=0) for ids in pieces])


def extend_embeddings(model: PreTrainedModel, new_ids: list[int], pieces: list[list[int]], vocab_size: int) -> dict:
    """Step 5: resize to `vocab_size` rounded up to PAD_MULTIPLE rows; new rows = mean of their pieces' rows.

    Rows that no token uses (the padding) get the mean of all old rows, so their logits sit at the average
    rather than anywhere in particular (Hewitt 2021, "Initializing new word embeddings"). The rows of the old
    vocabulary are not touched (a base with spare rows beyond its vocabulary has them used first). Returns
    the row counts and whether input and output embeddings are tied.
    """
    old_input = model.get_input_embeddings().weight.detach().clone()
    output = model.get_output_embeddings()
    tied = output is None or output.weight is model.get_input_embeddings().weight
    old_output = None if tied else output.weight.detach().clone()
    old_bias = None if tied or getattr(output, "bias", None) is None else output.bias.detach().clone()
    old_rows = old_input.shape[0]
    rows = math.ceil(max(vocab_size, old_rows) / PAD_MULTIPLE) * PAD_MULTIPLE
    model.resize_token_embeddings(rows, mean_resizing=False)
    index = torch.tensor(new_ids, dtype=torch.long)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[old_rows:] = old_input.mean(dim=0)
        weight[index] = _mean_rows(old_input, pieces)
        if not tied:
            output = model.get_output_embeddings()
            output.weight[old_rows:] = old_output.mean(dim=0)
            output.weight[index] = _mean_rows(old_output, pieces)
            if old_bias is not None:
                output.bias[old_rows:] = old_bias.mean()
                output.bias[index] = torch.stack([old_bias[ids].mean() for ids in pieces])
    return {"embedding_rows_before": old_rows, "embedding_rows_after": rows, "tied_embeddings": tied}


@dataclass
class Extension:
    model: PreTrainedModel
    tokenizer: Any
    report: dict[str, Any]


def _checked_selection(add: int | None, coverage: float | None, min_frequency: int) -> int | None:
    """How many tokens to add (DEFAULT_ADD when neither --add nor --coverage is given); a ConfigError naming the
    option for a value out of range."""
    if add is None and coverage is None:
        add = DEFAULT_ADD
    if add is not None and add < 1:
        raise ConfigError(f"--add {add}: add at least one token")
    if min_frequency < 1:
        raise ConfigError(f"--min-frequency {min_frequency}: a count of occurrences, at least 1")
    if coverage is not None and not 0 < coverage < 1:
        raise ConfigError(f"--coverage {coverage}: a share of the domain tokens to save, between 0 and 1 (e.g. 0.1)")
    return add


def extend_base(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    *,
    add: int | None = None,
    coverage: float | None = None,
    domain_vocab_size: int = DOMAIN_VOCAB_SIZE,
    min_frequency: int = 1,
    base: str = "the base",
    where: str | None = None,
) -> Extension:
    """The whole recipe on a loaded base; the model is changed in place and returned with the new tokenizer.

    `texts` is read four times, one batch at a time (a list, a `CorpusTexts` or a `SplitTexts`: anything that
    gives the same texts on every pass, not a one-shot iterator). Fertility before and after is measured on a
    seeded sample of them (`dapt.tokenizer.compare.fertility_sample`); the token counts on all of them.
    A candidate seen fewer than `min_frequency` times in `texts` is never added (its row would barely train).
    `where` starts the error for a tokenizer that cannot be extended (default: the CLI's "--base BASE").
    """
    if iter(texts) is texts:
        raise TypeError("extend_base reads the texts several times: pass a list or a CorpusTexts, not an iterator")
    add = _checked_selection(add, coverage, min_frequency)
    base_spec = check_extendable(tokenizer, base, where)
    backend = tokenizer.backend_tokenizer
    started = time.perf_counter()
    base_vocab = set(backend.get_vocab(with_added_tokens=True))
    sample = WordSample(MEASURE_MAX_WORDS)  # drawn during the first pass, for fertility before and after
    base_tokens = int(count_ids(backend, sample.passing(with_progress(texts, "extend: count the base's tokens"))).sum())
    documents = sample.offered
    candidates = [
        candidate
        for candidate in domain_candidates(base_spec, texts, domain_vocab_size, documents)
        if candidate.frequency >= min_frequency
    ]
    if not candidates:
        seen = f" seen at least {min_frequency} times" if min_frequency > 1 else ""
        raise DataError(f"the domain text has no frequent token{seen} that {base}'s vocabulary lacks; nothing to add")
    domain_vocab = {candidate.token for candidate in candidates}
    selection = select_tokens(candidates, base_vocab, domain_vocab, add=add, coverage=coverage, base_tokens=base_tokens)
    spec, new_ids = extended_tokenizer_spec(base_spec, selection.plan)
    extended = build_tokenizer(tokenizer, spec, new_ids)

    base_model = Tokenizer.from_str(json.dumps(base_spec)).model
    pieces = {token: base_model.tokenize(token) for token in new_ids}  # how the base cuts each new token
    piece_ids = [[piece.id for piece in pieces[token]] for token in new_ids]
    rows = extend_embeddings(model, list(new_ids.values()), piece_ids, len(extended))
    seconds = time.perf_counter() - started

    sampled = sample.texts()
    before, after = measure_documents(tokenizer, sampled), measure_documents(extended, sampled)
    counting = with_progress(texts, "extend: count the extended tokenizer's tokens", documents)
    extended_tokens = int(count_ids(extended.backend_tokenizer, counting).sum())
    ranked = {candidate.token: candidate for candidate in selection.chosen}
    frequency = {candidate.token: candidate.frequency for candidate in candidates}
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": base,
        "recipe": "ChipNeMo (Liu et al. 2023): domain BPE tokens the base lacks, ranked by the base tokens they save "
        "(frequency × (pieces − 1)) per vocabulary slot, added as BPE merges after the base's; new embedding rows = "
        "mean of the pieces' rows",
        "selection": {"add": add} if coverage is None else {"coverage": coverage},
        "domain_tokenizer_vocab_size": domain_vocab_size,
        "min_frequency": min_frequency,
        "candidates": len(candidates),
        "unbuildable_candidates": selection.unbuildable,
        "added": len(new_ids),
        "added_ranked": len(selection.chosen),
        "added_intermediate": len(new_ids) - len(selection.chosen),
        "old_vocab_size": len(tokenizer),
        "new_vocab_size": len(extended),
        **rows,
        "padded_to_multiple_of": PAD_MULTIPLE,
        "domain_documents": documents,
        "fertility_sample": {"documents": len(sampled), "words": sample.words, "max_words": MEASURE_MAX_WORDS},
        "domain_tokens_before": base_tokens,
        "domain_tokens_after": extended_tokens,
        "domain_tokens_saved_estimated": selection.estimated_savings,
        "domain_tokens_saved": base_tokens - extended_tokens,
        "fertility": {"before": before, "after": after},
        "seconds": seconds,
        "added_tokens": [
            {
                "id": index,
                "token": token,
                "text": token_text(token),
                "merge": list(selection.plan.tokens[token]),
                "pieces": [piece.value for piece in pieces[token]],
                "piece_ids": [piece.id for piece in pieces[token]],
                "frequency": frequency.get(token, 0),
                "savings": ranked[token].savings if token in ranked else None,
                "role": "ranked" if token in ranked else "intermediate",
            }
            for token, index in new_ids.items()
        ],
    }
    return Extension(model=model, tokenizer=extended, report=report)


def _sampled(report: dict[str, Any]) -> str:
    """Where tokens per word were measured, when it was not on every document."""
    sample, documents = report["fertility_sample"], report["domain_documents"]
    if sample["documents"] >= documents:
        return ""
    return (
        f" (on a seeded random sample of {sample['documents']:,} of the {documents:,} documents, "
        f"{sample['words']:,} words)"
    )


def run_extend(
    base: str,
    paths: list[str],
    *,
    out: Path,
    add: int | None = None,
    coverage: float | None = None,
    domain_vocab_size: int | None = None,
    min_frequency: int = 1,
    text_field: str = "text",
) -> int:
    """The CLI's entry point: load, extend, save the HF folder and extension.json, print the outcome."""
    from dapt.config import BaseConfig
    from dapt.model.load import load_original_base, save_model_folder

    check_model_spec(base, "--base")
    if Path(base).expanduser().resolve() == out.expanduser().resolve():
        raise ConfigError(f"--out {out}: that is the base's folder; a base is never modified, choose another folder")
    texts = open_corpus(paths, text_field=text_field)
    model, tokenizer, origin = load_original_base(BaseConfig(model=base))
    extension = extend_base(
        model,
        tokenizer,
        texts,
        add=add,
        coverage=coverage,
        domain_vocab_size=domain_vocab_size or DOMAIN_VOCAB_SIZE,
        min_frequency=min_frequency,
        base=base,
    )
    report = extension.report
    report["base_origin"] = origin
    save_model_folder(extension.model, extension.tokenizer, out)
    atomic_write_text(out / "extension.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    before, after = report["fertility"]["before"], report["fertility"]["after"]
    print(
        f"dapt tokenizer extend: {report['added']:,} tokens added ({report['added_ranked']:,} ranked + "
        f"{report['added_intermediate']:,} intermediate) from {report['candidates']:,} candidates; vocabulary "
        f"{report['old_vocab_size']:,} → {report['new_vocab_size']:,}, embedding rows "
        f"{report['embedding_rows_before']:,} → {report['embedding_rows_after']:,}"
    )
    saved = report["domain_tokens_saved"] / max(report["domain_tokens_before"], 1)
    print(
        f"  domain tokens {report['domain_tokens_before']:,} → {report['domain_tokens_after']:,} ({-saved:+.1%}; "
        f"estimated {-report['domain_tokens_saved_estimated'] / max(report['domain_tokens_before'], 1):+.1%}); "
        f"tokens per word {before['tokens_per_word']:.3f} → {after['tokens_per_word']:.3f}" + _sampled(report)
    )
    top = [entry for entry in report["added_tokens"] if entry["role"] == "ranked"][:8]
    print("  top: " + ", ".join(repr(entry["text"] or entry["token"]) for entry in top))
    print(f"saved to {out} (model + tokenizer; extension.json lists every added token)")
    return 0
