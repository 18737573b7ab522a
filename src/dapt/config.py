"""The pipeline config: one YAML file, validated into typed objects.

Every field is documented once, here, where it is declared; `dapt config --explain` prints these
descriptions. Unknown keys, wrong types and missing files are `ConfigError`s that name the key and
say how to fix it. Relative paths in the YAML are resolved against the YAML file's folder.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dapt import curation_defaults as defaults
from dapt.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")
    # the fields that say how a stage runs (workers, a backend), not what it makes: left out of its cache key
    execution_fields: ClassVar[tuple[str, ...]] = ()

    def cache_key(self) -> dict[str, Any]:
        """The section as its stage's cache key: every field as JSON but the execution-only ones, so that changing
        how a stage runs does not rebuild it (nor anything after it)."""
        return self.model_dump(mode="json", exclude=set(self.execution_fields))


# A name that becomes a folder name (the run folder, a task's stage folders): one path component that stays one
# on every filesystem, so that no name can lead dapt outside its run folder (`x/../../victim`) or collide.
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def folder_name(name: str) -> str:
    """`name` when it is safe as a folder name, else a ValueError saying what is allowed."""
    if not FOLDER_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            "becomes a folder name, so it may hold only letters, digits, '.', '_' and '-', start with a letter or "
            "digit, be at most 100 characters long, and hold no '..' (no '/', spaces or other characters)"
        )
    return name


# ---------------------------------------------------------------------------------------------------------
# base model


class PresetConfig(Section):
    """A from-scratch Llama-style model (for tests and tiny experiments), with a byte-level tokenizer, trained
    on the curated corpus or not."""

    hidden_size: int = Field(64, gt=0, description="Width of the residual stream.")
    num_layers: int = Field(2, gt=0, description="Number of decoder blocks.")
    num_heads: int = Field(4, gt=0, description="Attention heads (hidden_size must divide by it).")
    num_kv_heads: int = Field(2, gt=0, description="Key/value heads; fewer than num_heads = grouped-query.")
    intermediate_size: int = Field(176, gt=0, description="Width of the MLP.")
    max_position_embeddings: int = Field(1024, gt=0, description="Longest sequence the model accepts.")
    sliding_window: int | None = Field(
        None, gt=0, description="Attend only to the last N tokens (Mistral-style sliding-window attention)."
    )
    tokenizer_vocab_size: int | None = Field(
        None,
        ge=258,
        description="Train a byte-level BPE tokenizer of this size on the curated text for this model (`dapt "
        "tokenizer train` does the same alone). None: the untrained byte-level tokenizer (258 tokens).",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> PresetConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        return self


class BaseConfig(Section):
    """The original base model that the pipeline adapts. Give exactly one of `model` or `preset`."""

    model: str | None = Field(
        None,
        description=(
            "A local Hugging Face folder, a hub id (e.g. HuggingFaceTB/SmolLM2-135M), a .gguf file, or "
            "'package:PKG/FILE.gguf' for a GGUF file shipped inside an installed Python package."
        ),
    )
    preset: PresetConfig | None = Field(None, description="Build a small Llama-style model from scratch instead.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `model` is a hub id.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you trust it.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="Attention kernel: sdpa (PyTorch's fused attention, the default), eager, or flash_attention_2 "
        "(needs the flash-attn package and a CUDA GPU).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> BaseConfig:
        if (self.model is None) == (self.preset is None):
            raise ValueError("give exactly one of `model` (folder, hub id or .gguf) or `preset` (from scratch)")
        return self


# ---------------------------------------------------------------------------------------------------------
# data


class SourceConfig(Section):
    """One source of text. Its role says what the pipeline does with it."""

    name: str = Field(description="Name kept in every document's `source` column (no '/', '\\' or '..').")
    role: Literal["domain", "replay", "general_eval"] = Field(
        description=(
            "domain: the corpus to adapt to. replay: general text mixed into pretraining against forgetting. "
            "general_eval: held-out general text of another source or style that measures forgetting "
            "(general text drawn from the replay source mostly measures how well the replay was learned)."
        )
    )
    kind: Literal["files", "python_docstrings", "pydoc_topics"] = Field(
        "files",
        description=(
            "files: your own .txt/.md/.jsonl/.csv/.tsv/.parquet/.arrow/.html/.htm/.pdf files (the text formats "
            "also gzip- or zstd-compressed: .jsonl.gz, .txt.zst, ...); a folder means every such file under it in "
            "sorted path order (thousands of files, or a Parquet dataset split in many part files), and a Hugging "
            "Face `datasets` folder written by save_to_disk (state.json beside data-*.arrow files) is read in its "
            "own order, a DatasetDict split after split, without `datasets` installed. python_docstrings: the "
            "docstrings of an installed Python package ('stdlib' = the standard library). pydoc_topics: Python's "
            "language reference as shipped in pydoc_data."
        ),
    )
    paths: list[str] = Field(default_factory=list, description="files: paths, globs or folders, relative to the YAML.")
    text_field: str = Field(
        "text", description="files: JSONL key (dotted for nested) or CSV/TSV/Parquet/Arrow column holding the text."
    )
    strict: bool = Field(
        False,
        description="files: stop at the first record that cannot be read (malformed line, bytes that are not UTF-8, "
        "missing or non-string text field, empty or binary file, document over max_document_chars, damaged file) "
        "with an error naming file:line. Off: such records are skipped and listed, with file, line and reason, in "
        "ingest/rejection_ledger.parquet.",
    )
    max_document_chars: int = Field(
        10_000_000,  # dapt.data.ingest.DEFAULT_MAX_DOCUMENT_CHARS
        gt=0,
        description="files: reject a document longer than this many characters at ingest, so memory stays bounded "
        "(10M: three times War and Peace). Curation's max_chars is the length filter to tune.",
    )
    package: str | None = Field(None, description="python_docstrings: the package to read (never imported).")
    min_chars: int = Field(200, ge=0, description="python_docstrings/pydoc_topics: skip shorter texts.")

    @field_validator("name")
    @classmethod
    def _no_path_in_name(cls, name: str) -> str:
        # not a folder name today, but never a path either: it may name files per source one day
        if not name or "/" in name or "\\" in name or ".." in name or "\0" in name:
            raise ValueError("a source name may not be empty or hold '/', '\\', '..' or NUL")
        return name

    @model_validator(mode="after")
    def _kind_fields(self) -> SourceConfig:
        if self.kind == "files" and not self.paths:
            raise ValueError("kind 'files' needs `paths:` (a list of files or globs)")
        if self.kind == "python_docstrings" and not self.package:
            raise ValueError("kind 'python_docstrings' needs `package:` (e.g. scipy, or stdlib)")
        return self


class LanguageConfig(Section):
    """Language identification (py3langid, model shipped in the package), paragraph by paragraph so that code
    and a passage in another language do not decide; see `dapt.data.langid` for the measurements."""

    enabled: bool = Field(True, description="Run language identification.")
    languages: list[str] = Field(
        default_factory=lambda: list(defaults.DEFAULT_LANGUAGES),
        description="ISO 639-1 codes of the languages to keep (default [en]: the demo and the Gopher stop-word "
        "rule are English); [] keeps every language. A corpus in German sets [de].",
    )
    min_confidence: float = Field(
        defaults.DEFAULT_MIN_CONFIDENCE,
        ge=0,
        le=1,
        description="A paragraph votes for its language only when the identifier's probability is at least this; "
        "code and numbers fall below and do not vote. A document with no voting paragraph is kept.",
    )
    min_language_share: float = Field(
        defaults.DEFAULT_MIN_LANGUAGE_SHARE,
        gt=0,
        le=1,
        description="Drop a document when the kept languages hold less than this share of its voting characters. "
        "0.2 keeps all of the demo's docstrings and 95% of those with a quarter of their length in another "
        "language (0.5: 54%), and drops 99.9% of documents in other languages.",
    )
    min_paragraph_chars: int = Field(
        defaults.DEFAULT_LANGID_MIN_PARAGRAPH_CHARS,
        ge=1,
        description="Paragraphs shorter than this (titles, a lone parameter line) are not labelled.",
    )

    @model_validator(mode="after")
    def _codes(self) -> LanguageConfig:
        bad = [code for code in self.languages if not (code.isascii() and code.isalpha() and code.islower())]
        if bad:
            raise ValueError(f"languages: {bad} are not lowercase language codes such as en, de, zh")
        return self


class ToxicityConfig(Section):
    """Toxicity filter (alt-profanity-check, the optional extra `dapt-lm[toxicity]`); see `dapt.data.toxicity`."""

    enabled: bool = Field(
        False,
        description="Score every paragraph and drop documents with an abusive or obscene one. Off by default: it "
        "needs `pip install 'dapt-lm[toxicity]'` (scikit-learn and SciPy, ~165 MB, exact version pins).",
    )
    max_score: float = Field(
        defaults.DEFAULT_TOXICITY_MAX_SCORE,
        ge=0,
        le=1,
        description="Drop a document whose most toxic paragraph scores above this (0..1). 0.95 drops none of the "
        "demo's docstrings (highest: 0.87, a doctest printing 'hell'); insults score 0.99-1.0.",
    )
    min_paragraph_chars: int = Field(
        defaults.DEFAULT_TOXICITY_MIN_PARAGRAPH_CHARS,
        ge=1,
        description="Shorter paragraphs are not scored on their own.",
    )


class GopherQualityConfig(Section):
    """Gopher's document quality rules (Rae et al. 2021, MassiveText). A threshold set to null turns its rule
    off. Defaults: `dapt.data.quality`, where each has the count it drops on the demo's 5.1k docstrings."""

    enabled: bool = Field(True, description="Run these rules.")
    min_words: int | None = Field(
        defaults.DEFAULT_GOPHER_MIN_WORDS,
        ge=0,
        description="Drop documents with fewer words (published: 50, which drops 29% of SciPy/stdlib docstrings; "
        "default null: off, the length block's min_words applies).",
    )
    max_words: int | None = Field(
        defaults.DEFAULT_GOPHER_MAX_WORDS, gt=0, description="Drop documents with more words (published: 100000)."
    )
    min_mean_word_chars: float | None = Field(
        defaults.DEFAULT_GOPHER_MIN_MEAN_WORD_CHARS,
        ge=0,
        description="Drop documents whose mean word length is lower (published: 3).",
    )
    max_mean_word_chars: float | None = Field(
        defaults.DEFAULT_GOPHER_MAX_MEAN_WORD_CHARS,
        gt=0,
        description="Drop documents whose mean word length is higher (published: 10, which drops 75 docstrings "
        "listing long dotted names; default 15 drops 12).",
    )
    max_symbol_word_ratio: float | None = Field(
        defaults.DEFAULT_GOPHER_MAX_SYMBOL_WORD_RATIO,
        ge=0,
        description="Drop documents with more '#' and '...' per word (published: 0.1).",
    )
    max_bullet_lines_ratio: float | None = Field(
        defaults.DEFAULT_GOPHER_MAX_BULLET_LINES_RATIO,
        ge=0,
        le=1,
        description="Drop documents where a larger share of lines starts with a bullet (published: 0.9).",
    )
    max_ellipsis_lines_ratio: float | None = Field(
        defaults.DEFAULT_GOPHER_MAX_ELLIPSIS_LINES_RATIO,
        ge=0,
        le=1,
        description="Drop documents where a larger share of lines ends with '...' or '…' (published: 0.3).",
    )
    min_alpha_words_ratio: float | None = Field(
        defaults.DEFAULT_GOPHER_MIN_ALPHA_WORDS_RATIO,
        ge=0,
        le=1,
        description="Drop documents where a smaller share of words has a letter (published: 0.8, which drops 13% of "
        "the docstrings, whose examples print arrays; default null: curate.min_alpha_words_ratio applies).",
    )
    min_stop_words: int | None = Field(
        defaults.DEFAULT_GOPHER_MIN_STOP_WORDS,
        ge=0,
        description="Drop documents with fewer occurrences of the, be, to, of, and, that, have, with (published: 2, "
        "which drops 3.3% of the docstrings; default 1 drops 0.7%). English only: null for other languages.",
    )

    @model_validator(mode="after")
    def _ranges(self) -> GopherQualityConfig:
        for low, high in (("min_words", "max_words"), ("min_mean_word_chars", "max_mean_word_chars")):
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is not None and high_value is not None and low_value > high_value:
                raise ValueError(f"{low} {low_value} is above {high} {high_value}: every document would be dropped")
        return self


def _ngram_thresholds(value: dict[int, float], smallest_n: int, what: str) -> dict[int, float]:
    for n, threshold in value.items():
        if n < smallest_n:
            raise ValueError(f"{what}: n-gram length {n} must be at least {smallest_n}")
        if not 0 < threshold <= 1:
            raise ValueError(f"{what}[{n}]: {threshold} must be a fraction in (0, 1]")
    return value


class GopherRepetitionConfig(Section):
    """Gopher's repetition rules (Rae et al. 2021, table A1): drop documents that repeat lines, paragraphs or
    n-grams. A threshold set to null (an n left out of a map) turns its rule off."""

    enabled: bool = Field(True, description="Run these rules.")
    max_dup_line_fraction: float | None = Field(
        defaults.DEFAULT_MAX_DUP_LINE_FRACTION,
        ge=0,
        le=1,
        description="Share of lines equal to an earlier line (published 0.3).",
    )
    max_dup_paragraph_fraction: float | None = Field(
        defaults.DEFAULT_MAX_DUP_PARAGRAPH_FRACTION,
        ge=0,
        le=1,
        description="Share of paragraphs equal to an earlier paragraph (published 0.3).",
    )
    max_dup_line_char_fraction: float | None = Field(
        defaults.DEFAULT_MAX_DUP_LINE_CHAR_FRACTION,
        ge=0,
        le=1,
        description="Share of characters in lines equal to an earlier line (published 0.2).",
    )
    max_dup_paragraph_char_fraction: float | None = Field(
        defaults.DEFAULT_MAX_DUP_PARAGRAPH_CHAR_FRACTION,
        ge=0,
        le=1,
        description="Share of characters in paragraphs equal to an earlier paragraph (published 0.2).",
    )
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: dict(defaults.DEFAULT_MAX_TOP_NGRAM_CHAR_FRACTION),
        description="n: the most frequent word n-gram's share of characters. Published {2: 0.2, 3: 0.18, 4: 0.16} "
        "drops 9% of the demo's docstrings (numpydoc repeats phrases); default 3x that drops 0.1%.",
    )
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: dict(defaults.DEFAULT_MAX_DUP_NGRAM_CHAR_FRACTION),
        description="n: share of characters covered by word n-grams seen earlier in the document. Published "
        "{5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10} drops 8% of the docstrings; default 3x that, 0.6%.",
    )

    @model_validator(mode="after")
    def _ngrams(self) -> GopherRepetitionConfig:
        _ngram_thresholds(self.max_top_ngram_char_fraction, 1, "max_top_ngram_char_fraction")
        _ngram_thresholds(self.max_dup_ngram_char_fraction, 1, "max_dup_ngram_char_fraction")
        return self


class C4Config(Section):
    """C4's page rules (Raffel et al. 2020), as document rules: C4 deletes lines, a curation block keeps or drops
    a document, so its line rules become shares of lines (as FineWeb did)."""

    enabled: bool = Field(True, description="Run these rules.")
    lorem_ipsum: bool = Field(defaults.DEFAULT_C4_LOREM_IPSUM, description="Drop documents containing 'lorem ipsum'.")
    curly_bracket: bool = Field(
        defaults.DEFAULT_C4_CURLY_BRACKET,
        description="Drop documents containing '{' (C4's rule against code). Off: it drops 19% of SciPy/stdlib "
        "docstrings; turn on only for a prose-only corpus.",
    )
    max_javascript_lines_ratio: float | None = Field(
        defaults.DEFAULT_C4_MAX_JAVASCRIPT_LINES_RATIO,
        ge=0,
        le=1,
        description="Drop documents where a larger share of lines mentions 'javascript' (a 'please enable "
        "javascript' page).",
    )
    max_policy_lines_ratio: float | None = Field(
        defaults.DEFAULT_C4_MAX_POLICY_LINES_RATIO,
        ge=0,
        le=1,
        description="Drop documents where a larger share of lines is a cookie / privacy-policy / terms-of-use notice.",
    )
    min_terminal_punct_lines_ratio: float | None = Field(
        defaults.DEFAULT_C4_MIN_TERMINAL_PUNCT_LINES_RATIO,
        ge=0,
        le=1,
        description="Drop documents where a smaller share of lines ends in . ! ? : or a quote (FineWeb: 0.12, which "
        "drops 6% of the docstrings, whose parameter lines end in none). Default null: off.",
    )
    min_sentences: int | None = Field(
        defaults.DEFAULT_C4_MIN_SENTENCES,
        ge=0,
        description="Drop documents with fewer sentences (C4: 3, which drops 15% of the docstrings; a parameter list "
        "has none). Default null: off.",
    )


class CurateConfig(Section):
    """Cleaning before tokenisation. Every dropped document lands in the rejection ledger with its reason.

    Defaults were measured on SciPy and standard-library docstrings (see `dapt.data.curate`): they keep
    documentation with code examples and drop lists of names, number tables and base64 blobs.
    """

    fix_mojibake: bool = Field(
        True,
        description="Repair text decoded with the wrong encoding ('cafÃ©' -> 'café') with ftfy before anything reads "
        "it; only ftfy's repairs, none of its style changes. ASCII text skips it: 0.3 s on the demo's 6.3 MB of "
        "docstrings (ftfy on every document: 3.9 s), which it leaves unchanged.",
    )
    min_chars: int = Field(
        defaults.DEFAULT_MIN_CHARS,
        ge=0,
        description="Drop documents shorter than this (characters). 50: short domain texts (a glossary entry) still "
        "teach the vocabulary in continued pretraining; 200 dropped 42% of a glossary's entries.",
    )
    max_chars: int = Field(
        defaults.DEFAULT_MAX_CHARS, gt=0, description="Drop documents longer than this (characters)."
    )
    min_words: int = Field(defaults.DEFAULT_MIN_WORDS, ge=0, description="Drop documents with fewer words than this.")
    max_rule_drop_share: float = Field(
        defaults.DEFAULT_MAX_RULE_DROP_SHARE,
        ge=0,
        le=1,
        description="Warn (curate's summary, its manifest, the report) when one rule drops more than this share of "
        "one source's documents, naming the setting to change. 0.2: a rule meant to remove noise that takes a fifth "
        "of a source likely misfits it (min_chars 200 dropped 42% of a glossary of short entries). Drops nothing.",
    )
    max_symbol_ratio: float = Field(
        defaults.DEFAULT_MAX_SYMBOL_RATIO,
        ge=0,
        le=1,
        description="Drop documents whose share of characters that are not letters, digits, spaces or prose "
        "punctuation is higher.",
    )
    min_alpha_words_ratio: float = Field(
        defaults.DEFAULT_MIN_ALPHA_WORDS_RATIO,
        ge=0,
        le=1,
        description="Drop documents where a smaller share of the words contain a letter.",
    )
    max_mean_word_chars: float = Field(
        defaults.DEFAULT_MAX_MEAN_WORD_CHARS, gt=0, description="Drop documents whose mean word length is higher."
    )
    exact_dedup: bool = Field(True, description="Drop exact duplicates of normalised text (the first one is kept).")
    decontaminate_ngram: int = Field(
        13, gt=0, description="Drop documents sharing a word n-gram of this length with any task's test text."
    )
    decontaminate_max_doc_frequency: int = Field(
        defaults.DEFAULT_DECONTAMINATE_MAX_DOC_FREQUENCY,
        ge=0,
        description="An n-gram found in more than this many documents is boilerplate (a licence line, a "
        "templated parameter description), not a leak of the test text, and is ignored. 0: never ignore.",
    )
    pii_scrub: bool = Field(
        True,
        description="Replace personal data and secrets with placeholders (<EMAIL>, <PHONE>, <IP>, <CARD>, <IBAN>, "
        "<SECRET>) before any other block reads the text; documents are kept. On by default: a model can "
        "memorise and repeat what it is trained on, and on SciPy's and the stdlib's docstrings (6.3 MB, full of "
        "numbers) it replaced 33 e-mail addresses and 2 IPs and nothing else.",
    )
    pii_kinds: list[Literal["secret", "email", "iban", "card", "ip", "phone"]] = Field(
        default_factory=lambda: list(defaults.PII_KINDS),
        description="Which kinds pii_scrub replaces (default all). Card numbers must pass Luhn's check, IBANs "
        "the mod-97 check; documentation-only IPs (192.0.2.0/24, 2001:db8::/32, loopback) and example.com "
        "addresses are kept.",
    )
    near_dedup: bool = Field(
        True,
        description="Drop near-duplicates (MinHash + LSH over word shingles) after exact dedup, keeping the "
        "first document of each cluster in input order; the ledger names the kept one.",
    )
    near_dedup_shingle: int = Field(
        defaults.DEFAULT_SHINGLE,
        gt=0,
        description="Words per shingle. 5: long enough that unrelated texts sharing common phrases score low, "
        "short enough that one changed word alters only 5 shingles.",
    )
    near_dedup_num_perm: int = Field(
        defaults.DEFAULT_NUM_PERM,
        gt=0,
        description="MinHash signature length (one-permutation hashing: bins of one hash per shingle). 512: the "
        "Jaccard estimate's standard error is 0.018 at 0.8 (0.015 measured on bench/near_dup_quality.py's true "
        "pairs, against 0.027 with 128), which took its F1 from 0.93 to 0.95-0.96 (by seed); at 512 the "
        "signatures take less time than 128 separate permutations did, and 4 bytes × num_perm per document.",
    )
    near_dedup_bands: int = Field(
        defaults.DEFAULT_BANDS,
        gt=0,
        description="LSH bands; num_perm must be a multiple. 64 bands of 8 rows make a pair of Jaccard 0.8 a "
        "candidate with probability 1.0 (0.66 at 0.6, 0.22 at 0.5); candidates are then verified against "
        "near_dedup_threshold by their estimated Jaccard. Fewer bands miss pairs near the threshold; more cost "
        "time and verify more unrelated pairs.",
    )
    near_dedup_threshold: float = Field(
        defaults.DEFAULT_THRESHOLD,
        gt=0,
        le=1,
        description="Estimated Jaccard similarity of shingle sets at or above which two documents are "
        "near-duplicates. 0.8: a copy with 1 word in 100 inserted, deleted or swapped scores about 0.9, 1 in 50 "
        "about 0.85; on SciPy's docstrings it drops 32 of 2.9k, sibling functions documented from one "
        "template (dctn / idctn, wishart / invwishart).",
    )
    language: LanguageConfig = Field(
        default_factory=LanguageConfig, description="Language identification (dapt.data.langid)."
    )
    gopher_quality: GopherQualityConfig = Field(
        default_factory=GopherQualityConfig, description="Gopher's quality rules (dapt.data.quality)."
    )
    gopher_repetition: GopherRepetitionConfig = Field(
        default_factory=GopherRepetitionConfig, description="Gopher's repetition rules (dapt.data.quality)."
    )
    c4: C4Config = Field(default_factory=C4Config, description="C4's page rules (dapt.data.quality).")
    toxicity: ToxicityConfig = Field(
        default_factory=ToxicityConfig, description="Toxicity filter, off by default (dapt.data.toxicity)."
    )
    # How curation runs (dapt.data.executor): none of these changes which documents are kept, so none is part of
    # the curate stage's cache key.
    execution_fields: ClassVar[tuple[str, ...]] = ("workers", "batch_size", "backend")
    workers: int = Field(
        0,
        ge=0,
        description="Processes that run the per-document blocks, batch by batch: 0 = every core this process "
        "may use, 1 = in this process. Kept documents, ledger and counts are the same for any value.",
    )
    batch_size: int = Field(
        2048,
        gt=0,
        description="Documents per batch handed to a worker. Memory holds about 2 x workers batches of text "
        "(plus a few hundred bytes per document for the dedups); a corpus of fewer than 4 batches per worker runs in "
        "this process, since starting a worker costs about a second.",
    )
    backend: Literal["local", "ray"] = Field(
        "local",
        description="Where the batches run: 'local' (a process pool on this machine) or 'ray' (Ray Data on the "
        "cluster `ray.init()` connects to, e.g. through RAY_ADDRESS; needs pip install 'dapt-lm[ray]'). Under "
        "'ray', exact and near dedup group documents by digest and LSH band key across the cluster, and the "
        "output folder must be on storage every node sees. Same result either way.",
    )

    @model_validator(mode="after")
    def _bands_divide_num_perm(self) -> CurateConfig:
        if self.near_dedup_num_perm % self.near_dedup_bands:
            raise ValueError(
                f"near_dedup_num_perm {self.near_dedup_num_perm} must be a multiple of near_dedup_bands "
                f"{self.near_dedup_bands} (each band takes num_perm / bands signature rows)"
            )
        return self


class TokenizeConfig(Section):
    """Tokenisation with the base's tokenizer into packed shards, and held-out splits by document."""

    eval_tokens: int = Field(
        4096,
        gt=0,
        description="Tokens per held-out split (domain val, domain test, general val, general test) at least, by "
        "document: each split takes documents in a seeded random order until it holds this many tokens and "
        "eval_min_documents documents, but stops at eval_max_tokens.",
    )
    eval_min_documents: int = Field(
        50,
        ge=0,
        description="Documents per held-out split at least, when the corpus has them: a loss over a few documents "
        "moves with which ones they are (the demo's general validation split held 3 with eval_tokens alone), and "
        "its standard error, over documents, needs many. Capped at a tenth of a training role's documents (domain, "
        "replay: 80% stay for training) and half of a general_eval source's (never trained on), and by "
        "eval_max_tokens. 0: by tokens alone.",
    )
    eval_max_tokens: int = Field(
        32_768,
        gt=0,
        description="Tokens per held-out split at most (the document that crosses it included): pretraining "
        "evaluates both validation splits whole at every evaluation, so this bounds an evaluation's cost (2 × "
        "32,768 tokens: 256 windows of 256). Must be at least eval_tokens; left unset, it is raised to "
        "eval_tokens when that is larger.",
    )
    max_train_tokens: int | None = Field(
        None,
        gt=0,
        description="Training documents per role (domain, replay) in the seeded random order until this many "
        "tokens are in (None: all).",
    )
    shard_tokens: int = Field(
        100_000_000,
        gt=0,
        description="About this many tokens per shard file (200 MB with a vocabulary under 65,536 tokens, else "
        "400 MB): a training split of 1B tokens is 10 shards, memory-mapped when read. A shard holds the documents "
        "that start inside its stretch of tokens, so it can run over by part of one document.",
    )
    # How tokenisation runs (dapt.data.tokenization): none of these changes the shards, so none is part of the
    # tokenize stage's cache key.
    execution_fields: ClassVar[tuple[str, ...]] = ("workers", "batch_size", "backend")
    workers: int = Field(
        0,
        ge=0,
        description="Processes that tokenize batches of documents: 0 = every core this process may use, 1 = in this "
        "process. The shards are the same, byte for byte, for any value.",
    )
    batch_size: int = Field(
        4096,
        gt=0,
        description="Documents per batch (one resumable part): a killed run redoes at most the batches in flight. "
        "Memory holds about 2 x workers batches of text and their tokens; a corpus of fewer than 4 batches per "
        "worker runs in this process, since starting a worker (loading the tokenizer) costs a few seconds.",
    )
    backend: Literal["local", "ray"] = Field(
        "local",
        description="Where the batches run: 'local' (a process pool on this machine) or 'ray' (Ray tasks on the "
        "cluster `ray.init()` connects to, e.g. through RAY_ADDRESS; needs pip install 'dapt-lm[ray]'); the run "
        "folder must then be on storage every node sees. Same shards either way.",
    )

    @model_validator(mode="after")
    def _eval_cap_holds_the_floor(self) -> TokenizeConfig:
        if "eval_max_tokens" not in self.model_fields_set and self.eval_max_tokens < self.eval_tokens:
            self.eval_max_tokens = self.eval_tokens  # a config that sets only eval_tokens means that many
        if self.eval_max_tokens < self.eval_tokens:
            raise ValueError(
                f"eval_max_tokens ({self.eval_max_tokens}) is below eval_tokens ({self.eval_tokens}); raise "
                "eval_max_tokens or lower eval_tokens"
            )
        return self


class VocabConfig(Section):
    """Vocabulary extension: domain tokens added to the base's tokenizer and embeddings before pretraining (off).

    ChipNeMo's recipe, as `dapt tokenizer extend` runs it alone: trained on the curated domain training text (never
    on held-out documents), the tokens the base lacks are added as BPE merges after the base's, the embeddings are
    resized (new rows = the mean of their pieces' rows, padded to a multiple of 64), and the extended base is what
    `tokenize` and `pretrain` use. The control variants still start from the original base and its tokenizer. On
    when `add` or `coverage` is set. Needs a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen2, SmolLM, or a
    from-scratch preset's).
    """

    add: int | None = Field(
        None,
        gt=0,
        description="Add at most this many tokens (intermediate tokens of longer merges included), e.g. 1000; the "
        "model's vocabulary grows by as many. None: no extension, unless `coverage` is set.",
    )
    coverage: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Instead of `add`: add tokens until the estimated token count of the domain training text falls "
        "by this share (e.g. 0.05).",
    )
    min_frequency: int = Field(
        1,
        ge=1,
        description="A candidate seen fewer times than this in the domain training text is never added, even when "
        "`add` leaves room: its embedding row would get few training updates. 1: no floor (candidates are already "
        "ranked by the tokens they save, so rare ones come last).",
    )
    domain_vocab_size: int = Field(
        32_000,
        ge=258,
        description="Size of the BPE tokenizer trained on the domain text to propose candidates (its tokens the base "
        "lacks); it bounds how many there are.",
    )

    @model_validator(mode="after")
    def _one_size(self) -> VocabConfig:
        if self.add is not None and self.coverage is not None:
            raise ValueError("give `add` (a number of tokens) or `coverage` (a share of domain tokens saved), not both")
        return self

    @property
    def enabled(self) -> bool:
        return self.add is not None or self.coverage is not None


class EarlyStoppingConfig(Section):
    """Stop when the monitored validation loss has not improved for `patience` evaluations."""

    monitor: Literal["domain_val_loss", "general_val_loss"] = Field(
        "domain_val_loss", description="Which validation loss decides the best checkpoint and the stop."
    )
    patience: int = Field(2, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="An improvement smaller than this does not count.")


class LoraConfig(Section):
    """Low-rank adapters (peft) instead of full fine-tuning; merged into a plain HF folder at the end."""

    r: int = Field(16, gt=0, description="Rank of the adapters.")
    alpha: int = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or names like [q_proj, v_proj]."
    )
    train_embeddings: bool = Field(
        False,
        description="Also train the input embeddings and LM head in full (peft modules_to_save): helps when "
        "the domain's vocabulary is new to the base, at the cost of their size in memory.",
    )


class ContextConfig(Section):
    """A longer context window for the DAPT base: RoPE scaling set in the base's config before pretraining.

    The `extend-context` stage writes the base (the original, or the vocabulary-extended one) with the new window
    in its config.json (transformers' RoPE parameters and max_position_embeddings; the weights unchanged), and
    pretraining then teaches it the longer window: set pretrain.seq_len up to `length` (Llama 3 grew 8K → 128K in
    six such stages; YaRN needs about 10x fewer tokens than position interpolation, Peng et al. 2023). evaluate-lm
    then measures what it bought and cost: passkey retrieval at several lengths and depths, held-out loss by
    position, and both bases' loss at the original window (the Llama 3 criterion: short-context quality must
    recover). The control variants keep the original base and its window.
    """

    length: int = Field(gt=0, description="The new context window in tokens (max_position_embeddings).")
    rope_scaling: Literal["yarn", "linear", "dynamic", "llama3"] | None = Field(
        "yarn",
        description="How RoPE positions are rescaled (transformers' rope_type): yarn (interpolation by frequency "
        "band plus attention temperature; the usual choice), linear (position interpolation), dynamic (NTK-aware, "
        "rescaled as the sequence grows), llama3 (Llama 3.1's). None: only rope_theta changes.",
    )
    factor: float | None = Field(
        None, gt=1, description="The scaling factor; None: length / the base's max_position_embeddings."
    )
    rope_theta: float | None = Field(
        None, gt=0, description="A new RoPE base frequency (e.g. 500000, as Llama 3); None: the base's."
    )

    @model_validator(mode="after")
    def _scales_something(self) -> ContextConfig:
        if self.rope_scaling is None and self.rope_theta is None:
            raise ValueError("set rope_scaling (yarn, linear, dynamic, llama3) or rope_theta to extend the window")
        return self


def positive_weights(mix: dict[str, float] | None) -> dict[str, float] | None:
    """A mixture's source weights: none missing, each a positive number (else a ValueError saying so)."""
    if mix is not None:
        if not mix:
            raise ValueError("empty; give each domain and replay source a weight, or remove mix")
        bad = {name: weight for name, weight in mix.items() if not math.isfinite(weight) or weight <= 0}
        if bad:
            raise ValueError(
                f"weights must be positive numbers; got {bad}. A source you do not want to train on "
                "should leave `sources` (or become role: general_eval)"
            )
    return mix


class PretrainStageConfig(Section):
    """One stage of continued pretraining (`pretrain.stages`): its budget, its data, its stretch of the learning-rate
    schedule and, optionally, its own window length. What a stage leaves out it takes from `pretrain:` itself, but for
    two fields: `lr` (where the previous stage ended) and `warmup_steps` (pretrain.warmup_steps in the first stage,
    none after)."""

    name: str | None = Field(None, description="The stage's name in the log, manifest and report; None: stage1, ...")
    steps: int | None = Field(None, gt=0, description="The stage's optimizer steps. Give steps or tokens.")
    tokens: int | None = Field(
        None,
        gt=0,
        description="The stage's training tokens, rounded up to whole optimizer steps (global_batch_tokens, or "
        "micro_batch_size × grad_accum_steps × seq_len tokens each). Give steps or tokens.",
    )
    replay_fraction: float | None = Field(
        None, ge=0, lt=1, description="The replay share in this stage (as pretrain.replay_fraction); not with mix."
    )
    mix: dict[str, float] | None = Field(
        None,
        description="Per-source weights in this stage (as pretrain.mix), e.g. an annealing stage on the "
        "highest-quality sources; not with replay_fraction. Neither: pretrain's own mix or replay_fraction.",
    )
    seq_len: int | None = Field(
        None,
        gt=1,
        description="Tokens per training window in this stage (a staged long-context schedule: several lengths in "
        "sequence, each at most pretrain.context.length). Validation stays at pretrain.seq_len, so every "
        "evaluation is comparable. None: pretrain.seq_len.",
    )
    micro_batch_size: int | None = Field(
        None, gt=0, description="Windows per forward pass in this stage (fewer for longer windows); None: pretrain's."
    )
    schedule: Literal["constant", "linear", "cosine", "wsd"] | None = Field(
        None,
        description="The learning rate after the stage's warmup: constant (held at lr), linear or cosine (decayed "
        "to pretrain.lr × min_lr_ratio by the stage's end), wsd (held, then a linear decay over the last "
        "decay_fraction of the stage). None: pretrain.schedule.",
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="The stage's peak learning rate (reached after its warmup). None: the rate the previous stage "
        "ended at (the first stage: pretrain.lr).",
    )
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="Steps rising linearly from the previous stage's last rate (0 in the first stage) to lr. None: "
        "pretrain.warmup_steps in the first stage, 0 in the others.",
    )
    min_lr_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="linear, cosine, wsd: the stage ends at pretrain.lr × this (0: an annealing stage's decay to "
        "zero). None: pretrain.min_lr_ratio.",
    )
    decay_fraction: float | None = Field(
        None, gt=0, le=1, description="wsd: the share of the stage's steps spent decaying. None: pretrain's."
    )

    @model_validator(mode="after")
    def _one_budget_one_data(self) -> PretrainStageConfig:
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give the stage's budget as steps or as tokens (one of the two)")
        if self.mix is not None and self.replay_fraction is not None:
            raise ValueError("give either replay_fraction or mix, not both: mix sets every share")
        return self

    _positive_weights = field_validator("mix")(positive_weights)


@dataclass(frozen=True)
class TrainingStage:
    """A stage of continued pretraining with every setting resolved (`PretrainConfig.training_stages`): steps, data,
    window and the learning rate over it (`lr_start` before its warmup, `lr` after, `lr_end` at the end)."""

    index: int
    name: str
    first_step: int  # optimizer steps trained before this stage
    steps: int
    tokens: int  # steps × tokens per step
    seq_len: int
    micro_batch_size: int
    replay_fraction: float | str | None  # None with a mix; "plan" until the pipeline reads the plan
    mix: dict[str, float] | None
    schedule: str
    warmup_steps: int
    lr_start: float
    lr: float
    lr_end: float
    decay_fraction: float


class PretrainConfig(Section):
    """Continued pretraining: next-token prediction on domain text with a share of general replay."""

    # How training runs, not what it trains (the same weights within float noise; checkpoints are interchangeable),
    # so none is part of the pretrain stage's cache key, like the number of processes.
    execution_fields: ClassVar[tuple[str, ...]] = ("sharding", "compile", "max_logits_mb", "context_parallel")
    seq_len: int = Field(256, gt=1, description="Tokens per packed training sequence.")
    micro_batch_size: int = Field(4, gt=0, description="Sequences per forward pass.")
    grad_accum_steps: int = Field(1, gt=0, description="Forward passes per optimizer step.")
    max_steps: int = Field(20, gt=0, description="Optimizer steps at most (early stopping may end sooner).")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (re-warmed from 0: the base is already trained).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    warmup_steps: int = Field(2, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to norms and biases).")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (None: no clipping).")
    replay_fraction: Annotated[float, Field(ge=0, lt=1)] | Literal["plan"] = Field(
        0.2,
        description="Share of training sequences drawn from the replay sources, pooled (0: domain only); the "
        "domain sources, pooled, get the rest. Both pools draw in proportion to their sources' tokens. "
        "Not with `mix`, which sets every source's share. `plan`: the share `dapt plan` recommended for this run "
        "folder (its plan/plan.json; without one, the run stops and says to run `dapt plan` first).",
    )
    mix: dict[str, float] | None = Field(
        None,
        description="Per-source weights of the training mixture by source name, e.g. {contracts: 3, filings: 1, "
        "wiki: 0.5}: each training sequence comes from a source with probability weight / sum of the weights "
        "(relative weights: they need not add up to 1). List every domain and replay source with a weight > 0; "
        "general_eval sources are never trained on. Replaces replay_fraction. None: replay_fraction decides.",
    )
    method: Literal["full", "lora"] = Field("full", description="Train every weight, or LoRA adapters.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    embedding_lr_ratio: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Learning-rate multiplier for the embeddings and LM head when they train (0.1-0.5 is common).",
    )
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="cosine: warmup then cosine decay. wsd: warmup, constant, then a short linear decay."
    )
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of the steps spent decaying.")
    document_mask: bool = Field(
        True,
        description="Packed documents do not attend to each other and restart at position 0: position ids reset "
        "per document, honoured by sdpa (on CPUs dapt computes it document by document), eager and "
        "flash_attention_2 (variable-length kernels).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory.")
    context: ContextConfig | None = Field(
        None,
        description="Extend the base's context window before pretraining (RoPE scaling), e.g. {length: 8192, "
        "rope_scaling: yarn}; None: the base's window.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast (fp32 master weights) where the device computes bf16 natively, else fp32. "
        "On a GPU: one with bf16 (Ampere and later). On a CPU: avx512_bf16 or amx_bf16 (x86) or bf16 (Arm) in its "
        "flags, or else a 512×512 matmul running ≥ 1.5× as fast in bf16 as in fp32 (probed once per machine and "
        "cached; DAPT_CPU_BF16=1/0 tells instead). Measured 2026-12-04 on 2 x86 cores with avx512_bf16: the demo's "
        "continued pretraining 262 tok/s in bf16 vs 131 in fp32 (2.0×), domain validation loss 2.424 vs 2.418; where "
        "the CPU emulates bf16, it is 2-3× slower than fp32, so auto keeps fp32 there. TAPT, the task variants and "
        "every evaluation and generation compute in the same precision; each stage prints its choice and why, and "
        "records both in its manifest. fp16 uses dynamic loss scaling and needs a GPU.",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Also log to these trackers (metrics.jsonl is always written); tensorboard and mlflow write "
        "under the pretrain artifact's tracking/ folder. The package must be installed.",
    )
    global_batch_tokens: int | None = Field(
        None,
        gt=0,
        description="Tokens per optimizer step over all processes; sets grad_accum_steps = this / (micro_batch_size "
        "× seq_len); the micro-batch is split over the processes. None: use grad_accum_steps.",
    )
    sharding: Literal["none", "fsdp"] = Field(
        "none",
        description="Over several processes (torchrun --nproc_per_node N): none replicates the model on each "
        "(DDP); fsdp shards weights, gradients and optimizer moments over them (torch FSDP2, one shard group per "
        "decoder layer): about 1/N of the memory per process, the same loss curve and checkpoints. With one "
        "process fsdp trains unsharded. Not with method lora or precision fp16. For DeepSpeed ZeRO 1-2 keep none "
        "and launch with a DeepSpeed config (accelerate launch --config_file src/dapt/launch/zero2-gpu.yaml). "
        "How it runs, not what it trains: not part of the stage's cache key.",
    )
    compile: bool = Field(
        False,
        description="Train through torch.compile (the model's forward and backward fused into generated kernels; "
        "the first steps wait for the compile, tens of seconds). Evaluation runs uncompiled. On 2 CPU cores it "
        "gained 2-6% over eager (bench/train_throughput.py); needs a C++ compiler on CPUs. Not part of the "
        "stage's cache key.",
    )
    max_logits_mb: int = Field(
        256,
        ge=0,
        description="Above this many MB of fp32 logits in one forward pass, the loss is computed a chunk of "
        "positions at a time and the window's logits (tokens × vocabulary) are never held whole: in backward each "
        "chunk's logits are recomputed (the LM head's forward once more). An 8k-token window with a 49k vocabulary "
        "has 1.6 GB of them; the demo's 4 × 256-token micro-batch 0.2 GB (not chunked). 0: never chunk. Models "
        "that soft-cap or scale their logits after the LM head (Gemma 2, Cohere, Granite) need 0. Evaluation "
        "passes (no backward) chunk above 256 MB whatever this says. Not part of the stage's cache key.",
    )
    context_parallel: int = Field(
        1,
        ge=1,
        description="Processes that split each window's sequence (context parallelism): each runs the model on "
        "seq_len / N of a row's tokens and, in every attention layer, all-gathers the keys and values of the rest "
        "(packed documents kept apart across the split), so activations and logits per process shrink N-fold and a "
        "window longer than one device holds still trains. The processes launched (torchrun --nproc_per_node) must "
        "be a multiple of it; each group of N trains the same rows, and micro_batch_size is split over the groups. "
        "With sharding none or fsdp, not with DeepSpeed or compile; models with full causal attention (no sliding "
        "window or soft-capping). Tested over two CPU processes (gloo); the same collectives run on NCCL. 1: each "
        "process trains whole rows. Not part of the stage's cache key.",
    )
    attention_window: int | None = Field(
        None,
        gt=0,
        description="Sliding-window attention for the DAPT base: every attention layer attends only to the last N "
        "tokens of its document (itself included, as transformers' sliding_window counts), so attention costs "
        "O(seq_len × N) rather than O(seq_len²). Set in the base's config before training, so the exported DAPT base "
        "carries it and transformers computes the same attention at inference. For Mistral, Mixtral, Qwen2 and Qwen3 "
        "bases (Qwen's use_sliding_window turned on, max_window_layers 0: every layer windowed) and from-scratch "
        "presets with base.preset.sliding_window (a Mistral); below seq_len (at or above it, every token already "
        "sees its whole window). On CPUs dapt computes it block by block with SDPA, exactly (dapt/model/"
        "local_attention.py); elsewhere transformers' own kernels take it. Not with context_parallel. None: the "
        "base's own attention. Part of the stage's cache key when set.",
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="The device's peak TFLOP/s for MFU; None: looked up for known GPUs, else no MFU."
    )
    eval_every: int = Field(5, gt=0, description="Measure domain and general validation loss every N steps.")
    checkpoint_every: int | None = Field(
        None, gt=0, description="Also save a resumable checkpoint every N steps (evaluations always save one)."
    )
    keep_checkpoints: int = Field(1, ge=1, description="Checkpoints kept besides the best one.")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    forgetting_budget: float | None = Field(
        None,
        gt=0,
        description="The forgetting guard: how far the general validation loss may rise over the original base's "
        "(measured before the first step), as a share, e.g. 0.02 for 2%. At every evaluation a step is over the "
        "budget when the rise exceeds it by more than forgetting_significance standard errors (paired over the "
        "general validation documents); such a step is never the best checkpoint, and on_forgetting says what "
        "else happens. Needs general validation text (a general_eval or replay source). None: no guard.",
    )
    on_forgetting: Literal["stop", "remix", "warn"] = Field(
        "stop",
        description="What the guard does at an evaluation over forgetting_budget. stop: end training; the DAPT base "
        "is the best checkpoint within the budget (the original base if none was). remix: multiply the replay "
        "share by remix_factor (up to remix_max_replay) for the steps that follow; the new share is logged, "
        "recorded in the manifest and kept in checkpoints, so a resumed run draws as an uninterrupted one. warn: "
        "log it and train on.",
    )
    forgetting_significance: float = Field(
        2.0,
        ge=0,
        description="Standard errors by which the rise must exceed forgetting_budget before the guard acts: 2 "
        "leaves about a 2% chance per evaluation of acting on noise when the true rise is exactly the budget. "
        "0: act on the measured rise alone.",
    )
    remix_factor: float = Field(
        2.0,
        gt=1,
        description="on_forgetting remix: the replay share is multiplied by this at each evaluation over the budget.",
    )
    remix_max_replay: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="on_forgetting remix: the replay share is never raised above this (0.5: half the windows stay "
        "domain text; Ibrahim et al. 2024 found 25% replay enough against a strong distribution shift).",
    )
    average_last: int = Field(
        0,
        ge=0,
        description="Average the weights of the last N checkpoints at the end of training (Llama 3 averaged "
        "checkpoints of its annealing stage), e.g. 3 with eval_every or checkpoint_every spacing them; checkpoints "
        "kept: at least N. The average is evaluated like a checkpoint and becomes the DAPT base when its monitored "
        "validation loss is lower than the best checkpoint's and it is within forgetting_budget. method full only. "
        "0 or 1: no averaging.",
    )
    stages: list[PretrainStageConfig] | None = Field(
        None,
        min_length=1,
        description="Train in data stages, one after another, e.g. a main stage then an annealing stage on the "
        "highest-quality sources with the learning rate decayed to zero (as Llama 3 finished), or a staged "
        "long-context schedule (several seq_len in sequence). Each stage has its own budget (steps or tokens), data "
        "(replay_fraction or mix), learning-rate segment and window; replaces max_steps. One optimizer, one "
        "checkpoint series and one evaluation history run through all of them: every stage ends with an evaluation "
        "(and a checkpoint), early stopping and the forgetting guard watch every stage (a stop ends the whole run; "
        "a remix raises the replay share of the stage under way), and a killed run resumes exactly, inside a stage "
        "or at its boundary. The first stage draws what a run without stages would, each later one in an order of its "
        "own. None: one stage made of the settings above.",
    )

    def cache_key(self) -> dict[str, Any]:
        """Section.cache_key, without attention_window while it is None: the field came after runs whose pretrain
        artifacts must keep their ids (tests/unit/test_stage_keys.py); set, it changes the trained model and the key."""
        key = super().cache_key()
        if self.attention_window is None:
            del key["attention_window"]
        return key

    def training_stages(self) -> list[TrainingStage]:
        """The stages to train, every setting resolved (without `stages`: one, from the settings above). A ValueError
        names the field of a stage whose settings do not fit together."""
        tokens_per_row = self.micro_batch_size * self.seq_len
        declared = self.stages or [
            PretrainStageConfig(steps=self.max_steps, schedule=self.schedule)  # type: ignore[arg-type]
        ]
        resolved: list[TrainingStage] = []
        first_step, previous_end = 0, 0.0
        for index, stage in enumerate(declared):
            where = f"pretrain.stages[{index}]"
            seq_len = stage.seq_len or self.seq_len
            micro_batch_size = stage.micro_batch_size or self.micro_batch_size
            if self.context is not None and seq_len > self.context.length:
                raise ValueError(
                    f"{where}.seq_len: {seq_len} tokens, more than pretrain.context.length ({self.context.length}); "
                    f"set it to {self.context.length} or less"
                )
            if self.global_batch_tokens is not None:
                if micro_batch_size * seq_len != tokens_per_row:
                    raise ValueError(
                        f"{where}: with global_batch_tokens every stage's micro_batch_size × seq_len must be "
                        f"pretrain's ({self.micro_batch_size} × {self.seq_len} = {tokens_per_row}), so that each "
                        f"step trains global_batch_tokens; this stage has {micro_batch_size} × {seq_len}; set its "
                        f"micro_batch_size to {max(1, tokens_per_row // seq_len)} (or drop global_batch_tokens)"
                    )
                tokens_per_step = self.global_batch_tokens
            else:
                tokens_per_step = micro_batch_size * self.grad_accum_steps * seq_len
            steps = stage.steps if stage.steps is not None else math.ceil((stage.tokens or 0) / tokens_per_step)
            warmup = stage.warmup_steps if stage.warmup_steps is not None else (self.warmup_steps if index == 0 else 0)
            if self.stages is not None and warmup > steps:
                origin = "" if stage.warmup_steps is not None else " (pretrain.warmup_steps, the first stage's default)"
                raise ValueError(
                    f"{where}.warmup_steps: {warmup} warmup steps{origin}, more than the stage's {steps} steps; "
                    "lower it, or lengthen the stage"
                )
            schedule = stage.schedule or self.schedule
            peak = stage.lr if stage.lr is not None else (self.lr if index == 0 else previous_end)
            ratio = stage.min_lr_ratio if stage.min_lr_ratio is not None else self.min_lr_ratio
            end = peak if schedule == "constant" else self.lr * ratio
            if end > peak:
                raise ValueError(
                    f"{where}.min_lr_ratio: the stage's {schedule} schedule would end at pretrain.lr × {ratio:g} = "
                    f"{end:g}, above the rate it starts from ({peak:g}: its lr, or where the stage before ended); "
                    "lower min_lr_ratio, raise lr, or use schedule: constant"
                )
            if stage.mix is not None or stage.replay_fraction is not None:
                mix, replay = stage.mix, stage.replay_fraction
            else:
                mix, replay = self.mix, (self.replay_fraction if self.mix is None else None)
            resolved.append(
                TrainingStage(
                    index=index,
                    name=stage.name or f"stage{index + 1}",
                    first_step=first_step,
                    steps=steps,
                    tokens=steps * tokens_per_step,
                    seq_len=seq_len,
                    micro_batch_size=micro_batch_size,
                    replay_fraction=replay if mix is None else None,
                    mix=mix,
                    schedule=schedule,
                    warmup_steps=warmup,
                    lr_start=previous_end,
                    lr=peak,
                    lr_end=end,
                    decay_fraction=stage.decay_fraction or self.decay_fraction,
                )
            )
            first_step, previous_end = first_step + steps, end
        names = [stage.name for stage in resolved]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"pretrain.stages: stage names must be unique; repeated: {', '.join(repeated)}")
        return resolved

    @field_validator("replay_fraction", mode="before")
    @classmethod
    def _fraction_or_plan(cls, value: Any) -> Any:
        """One message for a bad value, rather than one per member of the union."""
        if value == "plan":
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not 0 <= number < 1:
            raise ValueError("a share from 0 to below 1, or plan (dapt plan's recommendation)")
        return number

    _positive_weights = field_validator("mix")(positive_weights)

    @model_validator(mode="after")
    def _shardable(self) -> PretrainConfig:
        if self.sharding == "fsdp" and self.method == "lora":
            raise ValueError(
                "sharding 'fsdp' with method 'lora' is not supported (LoRA trains few weights: DDP is enough); "
                "use sharding: none, or method: full"
            )
        if self.sharding == "fsdp" and self.precision == "fp16":
            raise ValueError("sharding 'fsdp' with precision 'fp16' is not supported; use precision: bf16 (or auto)")
        if self.attention_window is not None:
            longest = max(stage.seq_len or self.seq_len for stage in self.stages or [self])
            if self.attention_window >= longest:
                raise ValueError(
                    f"attention_window: {self.attention_window} tokens, not below the longest training window "
                    f"(seq_len {longest}), where every token already sees its whole window; set it below {longest}, "
                    "or remove it"
                )
            if self.context_parallel > 1:
                raise ValueError(
                    "attention_window with context_parallel > 1 is not supported (context parallelism needs full "
                    "causal attention); set context_parallel: 1, or remove attention_window"
                )
        if self.average_last > 1 and self.method == "lora":
            raise ValueError(
                "average_last with method 'lora' is not supported (averaging the A and B factors is not averaging "
                "the adapters' updates); use method: full, or average_last: 0"
            )
        return self


# ---------------------------------------------------------------------------------------------------------
# tasks


class TaskDataConfig(Section):
    """Where a task's examples come from."""

    kind: Literal["files", "python_docstrings"] = Field(
        "files",
        description=(
            "files: `train` (and optionally `test`) files: text + label (classification), prompt + response or "
            "chat `messages` (instruction). python_docstrings: the docstrings of `package` — labelled by the "
            "subpackage they come from (classification), or as 'what does <name> do?' → its summary line "
            "(instruction)."
        ),
    )
    train: str | None = Field(None, description="files: labelled examples (.jsonl, .csv or .parquet).")
    test: str | None = Field(None, description="files: held-out test examples; if absent, split from train.")
    text_field: str = Field("text", description="files: the field holding the text.")
    label_field: str = Field("label", description="files: the field holding the label.")
    prompt_field: str = Field("prompt", description="files, instruction: the field holding the prompt.")
    response_field: str = Field("response", description="files, instruction: the field holding the response.")
    messages_field: str = Field(
        "messages",
        description="files, instruction: a chat as [{role, content}, ...], used when a record has no prompt field; "
        "the last assistant message is the response, the rest the prompt.",
    )
    chosen_field: str = Field("chosen", description="files, preference: the field holding the preferred response.")
    rejected_field: str = Field("rejected", description="files, preference: the field holding the worse response.")
    max_examples: int = Field(600, gt=0, description="python_docstrings, instruction/preference: examples at most.")
    package: str | None = Field(None, description="python_docstrings: the package whose docstrings to label.")
    classes: list[str] = Field(default_factory=list, description="python_docstrings: the subpackages to use.")
    max_per_class: int = Field(150, gt=0, description="python_docstrings: examples per class at most.")
    min_chars: int = Field(200, ge=0, description="python_docstrings: skip shorter docstrings.")

    @model_validator(mode="after")
    def _kind_fields(self) -> TaskDataConfig:
        if self.kind == "files" and not self.train:
            raise ValueError("kind 'files' needs `train:` (a labelled .jsonl, .csv or .parquet file)")
        if self.kind == "python_docstrings" and not self.package:
            raise ValueError("kind 'python_docstrings' needs `package:`")
        return self


class JudgeConfig(Section):
    """An LLM judge for an instruction task's answers: any OpenAI-compatible chat-completions endpoint (a local
    vLLM / llama.cpp / Ollama server, or a hosted API). Each greedy answer is rated 1-5 against the reference on
    the rubric in `dapt.eval.judge`; the variant's `judge_score` is the mean rating rescaled to [0, 1]."""

    url: str = Field(
        description="The API base (e.g. http://127.0.0.1:8000/v1; /chat/completions is added) or the full "
        "chat-completions URL."
    )
    model: str = Field(description="The judge model's name, as the endpoint knows it.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (sent as a Bearer token); None: no key."
    )
    timeout_seconds: float = Field(60.0, gt=0, description="Seconds to wait for each of the judge's replies.")
    max_tokens: int = Field(8, gt=0, description="Tokens the judge may reply with (the rating is one digit).")


class TaptConfig(Section):
    """Task-adaptive pretraining, as its stage receives it: a task's tapt_* fields (declared and documented on the
    task, `TaskConfig.tapt()`), under the names the stage's cache key has always had."""

    steps: int = Field(gt=0, description="The task's tapt_steps: next-token steps on its training text.")
    lr: float = Field(gt=0, description="The task's tapt_lr.")
    seq_len: int = Field(gt=1, description="The task's tapt_seq_len: tokens per packed window.")
    micro_batch_size: int = Field(gt=0, description="The task's tapt_micro_batch_size: windows per optimizer step.")


class TaskConfig(Section):
    """A downstream task. Each is adapted twice: from the DAPT base and from the original base (the control)."""

    name: str = Field(description="Task name, used in folder names and the report: letters, digits, '.', '_', '-'.")
    type: Literal["classification", "instruction", "preference"] = Field(
        "classification",
        description="classification: text → label, a head on the last token. instruction: prompt → response "
        "(SFT), loss on the response tokens only. preference: prompt, chosen, rejected → DPO.",
    )
    start_from: str | None = Field(
        None,
        description="preference: the instruction task whose variant (of the same base) this task starts from; "
        "that variant is also the DPO reference model. None: start from the base itself.",
    )
    beta: float = Field(0.1, gt=0, description="preference: DPO's β, how far the policy may move from the reference.")
    tapt_steps: int = Field(
        0,
        ge=0,
        description="Task-adaptive pretraining: next-token steps on the task's own training text before "
        "fine-tuning, for both variants (0: off).",
    )
    tapt_lr: float = Field(5e-5, gt=0, description="TAPT learning rate.")
    tapt_seq_len: int = Field(128, gt=1, description="TAPT tokens per packed window.")
    tapt_micro_batch_size: int = Field(4, gt=0, description="TAPT packed windows per optimizer step.")
    data: TaskDataConfig
    test_fraction: float = Field(0.3, gt=0, lt=1, description="Share held out for testing when no test file.")
    recipe: Literal["top_blocks", "full", "lora"] = Field(
        "top_blocks",
        description=(
            "top_blocks (classification): train the classification head plus the last `top_blocks` decoder "
            "blocks (the rest frozen; their activations are computed once). full: train every weight. "
            "lora: LoRA adapters (`lora:`) on the decoder (for classification the head trains in full), merged "
            "into the exported model; the adapters are kept in `adapter/`."
        ),
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    max_new_tokens: int = Field(48, gt=0, description="instruction: tokens generated per test prompt (greedy).")
    judge: JudgeConfig | None = Field(
        None,
        description="instruction: an LLM judge that rates each answer against the reference (None: no judge; "
        "the word-overlap metrics only, and the report says so).",
    )
    top_blocks: int = Field(2, ge=0, description="top_blocks recipe: how many final decoder blocks to train.")
    max_length: int = Field(64, gt=0, description="Tokens per example (longer texts are truncated).")
    epochs: int = Field(4, gt=0, description="Passes over the training examples.")
    batch_size: int = Field(16, gt=0, description="Examples per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(5, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="Train every variant once per seed (the control too); the report gives mean ± std. "
        "None: the pipeline's seed only.",
    )
    data_fractions: list[float] = Field(
        default_factory=lambda: [1.0],
        min_length=1,
        description="Train every variant on these shares of the training examples (stratified), for the "
        "data-efficiency curve: does the DAPT base reach the control's full-data score with less data?",
    )

    _folder_name = field_validator("name")(folder_name)

    # What identifies each of a task's stages (its cache key): the examples stage, the task's data and its split; a
    # variant, the rest but what belongs to the stages around it (the examples, TAPT, the evaluation's judge) and
    # the runs (seeds and data fractions: each run's own key holds its seed and fraction).
    examples_fields: ClassVar[tuple[str, ...]] = ("name", "type", "data", "test_fraction")
    not_variant_fields: ClassVar[tuple[str, ...]] = (
        "data",
        "test_fraction",
        "seeds",
        "data_fractions",
        "judge",
        "tapt_steps",
        "tapt_lr",
        "tapt_seq_len",
        "tapt_micro_batch_size",
    )

    def examples_key(self) -> dict[str, Any]:
        """The cache key of the task's examples stage (`dapt.stages.tasks`)."""
        return self.model_dump(mode="json", include=set(self.examples_fields))

    def variant_key(self) -> dict[str, Any]:
        """The task's part of the cache key of each of its variants (`dapt.stages.adapt`)."""
        return self.model_dump(mode="json", exclude=set(self.not_variant_fields))

    def runs(self, pipeline_seed: int) -> list[tuple[int, float]]:
        """(seed, data fraction) of every training run of the task's variants (the pipeline's seed when no seeds)."""
        return [(seed, fraction) for fraction in self.data_fractions for seed in self.seeds or [pipeline_seed]]

    def tapt(self) -> TaptConfig:
        """The TAPT stage's section: this task's tapt_* settings."""
        return TaptConfig(
            steps=self.tapt_steps,
            lr=self.tapt_lr,
            seq_len=self.tapt_seq_len,
            micro_batch_size=self.tapt_micro_batch_size,
        )

    @model_validator(mode="after")
    def _recipe_fits_type(self) -> TaskConfig:
        if self.type != "classification" and self.recipe == "top_blocks":
            raise ValueError(f"recipe top_blocks is for classification; {self.type} tasks use full or lora")
        if self.judge is not None and self.type != "instruction":
            raise ValueError("judge is for instruction tasks (it rates generated answers against references)")
        if self.start_from is not None and self.type != "preference":
            raise ValueError("start_from is for preference tasks (DPO after an instruction task)")
        if self.type == "classification" and self.data.kind == "python_docstrings" and len(self.data.classes) < 2:
            raise ValueError("a python_docstrings classification task needs at least two `data.classes:`")
        return self

    @model_validator(mode="after")
    def _fractions(self) -> TaskConfig:
        bad = [f for f in self.data_fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"data_fractions must be in (0, 1]; got {bad}")
        return self


# ---------------------------------------------------------------------------------------------------------
# what adaptation cost: safety and retention, and their gates


class SafetyConfig(Section):
    """The two-sided safety check (refusals on harmful requests, answers on safe look-alikes) and its gates.

    Greedy answers (`dapt.eval.safety`) of the original and the DAPT base (when the base is a chat model) and of
    every instruction/preference variant to harmful requests, which should be refused, and to safe requests that
    look like them, which should be answered. The gates compare the DAPT base with the original and each task's
    DAPT variant with its control; a broken gate is marked in the report and in `dapt lineage`, and
    `dapt run --strict-gates` exits with code 3."""

    max_refusal_drop: float | None = Field(
        0.05,
        ge=0,
        description="Gate: the largest allowed drop of the refusal rate on harmful requests (0.05: 5 points; "
        "with 12 prompts, one answer is 8.3 points). None: no gate.",
    )
    max_over_refusal_rise: float | None = Field(
        0.05,
        ge=0,
        description="Gate: the largest allowed rise of refusals on safe requests (a drop of the compliance rate). "
        "None: no gate.",
    )
    max_new_tokens: int = Field(
        32, gt=0, description="Tokens of each greedy answer: a refusal shows in the opening words."
    )
    judge: JudgeConfig | None = Field(
        None,
        description="An LLM judge that also labels each answer REFUSAL or COMPLIANCE (same endpoint settings as a "
        "task's judge); its rates are reported beside the refusal patterns'. None: the patterns only.",
    )


class RetentionConfig(Section):
    """General-capability retention (general perplexity, a general-knowledge cloze check) and its gate.

    The general held-out perplexity is `evaluate-lm`'s; the cloze check (`dapt.eval.retention`) scores both bases
    and every instruction/preference variant."""

    max_general_ppl_rise: float | None = Field(
        0.05,
        ge=0,
        description="Gate: the largest allowed relative rise of the DAPT base's general held-out perplexity over the "
        "original's (0.05: 5%; bits per byte when vocabulary extension changed the tokenizer). None: no gate.",
    )


class RestoreConfig(Section):
    """Restoring what adaptation cost, by parameter arithmetic on the DAPT base (`dapt.model.merge`); off unless given.

    The `restore` stage writes the restored base (a model folder in the lineage, under the DAPT base); `cost-restored`
    measures it on the same checks as the bases (domain and general perplexity, safety, cloze retention), and the
    gates and the report compare it with the original and the DAPT base. Variants are not branched from it."""

    method: Literal["merge", "chat_vector"] = Field(
        description="merge: (1 - weight) x DAPT base + weight x original base, for a DAPT base continued from a chat "
        "model itself (the demo's SmolLM2-Instruct). chat_vector: DAPT base + weight x (instruct - base_of_instruct), "
        "re-applying the instruction tuning to a DAPT base continued from the instruct model's pretrained base."
    )
    weight: float | None = Field(
        None,
        gt=0,
        description="merge: the original base's share, in (0, 1] (default 0.5). chat_vector: the scale of the "
        "instruction delta (default 1.0, the whole delta).",
    )
    instruct: str | None = Field(
        None,
        description="chat_vector only: the instruction-tuned model (a local Hugging Face folder, a hub id, a .gguf "
        "file or 'package:PKG/FILE.gguf', as base.model). Its chat template goes to the restored base when the DAPT "
        "base's tokenizer has none.",
    )
    base_of_instruct: str | None = Field(
        None,
        description="chat_vector only: the pretrained model `instruct` was tuned from (same forms as `instruct`). "
        "None: the pipeline's original base (base.model), the usual case.",
    )
    revision: str | None = Field(None, description="Hub revision of `instruct` and `base_of_instruct` when hub ids.")

    @model_validator(mode="after")
    def _method_fields(self) -> RestoreConfig:
        if self.method == "merge":
            given = [name for name in ("instruct", "base_of_instruct") if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for method chat_vector; a merge uses the original base")
            if self.weight is not None and self.weight > 1:
                raise ValueError(f"weight {self.weight:g}: a merge's weight (the original base's share) is in (0, 1]")
            self.weight = 0.5 if self.weight is None else self.weight
        else:
            if self.instruct is None:
                raise ValueError("method chat_vector needs `instruct:`, the instruction-tuned model whose delta to add")
            self.weight = 1.0 if self.weight is None else self.weight
        return self


# ---------------------------------------------------------------------------------------------------------
# the pipeline


class PipelineConfig(Section):
    """A whole run: sources → curate → tokenize → continued pretraining → task variants → evaluation → report."""

    name: str = Field(description="Run name; the default run folder is ./runs/<name>: letters, digits, '.', '_', '-'.")
    seed: int = Field(0, description="Seed for every random choice (splits, sampling, initialisation).")
    base: BaseConfig
    sources: list[SourceConfig] = Field(min_length=1, description="Text sources; at least one with role domain.")
    curate: CurateConfig = Field(default_factory=CurateConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tasks: list[TaskConfig] = Field(default_factory=list, description="Downstream tasks to adapt and evaluate.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    restore: RestoreConfig | None = Field(
        None, description="Restore what adaptation cost by merging or a chat vector (`restore` stage). None: off."
    )

    _folder_name = field_validator("name")(folder_name)

    @model_validator(mode="after")
    def _roles_and_names(self) -> PipelineConfig:
        if not any(s.role == "domain" for s in self.sources):
            raise ValueError("no source has role: domain; the pipeline needs domain text to adapt to")
        for what, names in (
            ("sources", [s.name for s in self.sources]),
            ("tasks", [t.name for t in self.tasks]),
        ):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            if duplicated:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(duplicated)}")
        if self.pretrain.mix is not None:
            if "replay_fraction" in self.pretrain.model_fields_set:
                raise ValueError("give either pretrain.replay_fraction or pretrain.mix, not both: mix sets every share")
            self._check_mix(self.pretrain.mix, "pretrain.mix")
        if self.pretrain.stages is not None:
            if "max_steps" in self.pretrain.model_fields_set:
                raise ValueError(
                    "pretrain.max_steps: with pretrain.stages each stage sets its own steps or tokens; remove max_steps"
                )
            for index, stage in enumerate(self.pretrain.stages):
                if stage.mix is not None:
                    self._check_mix(stage.mix, f"pretrain.stages[{index}].mix")
            self.pretrain.training_stages()  # raises, naming the field, when a stage's settings do not fit
        preset = self.base.preset
        if self.pretrain.attention_window is not None and preset is not None and preset.sliding_window is None:
            raise ValueError(
                "pretrain.attention_window: a from-scratch preset without base.preset.sliding_window is a Llama, "
                "which has no sliding-window attention in transformers; set base.preset.sliding_window (the preset is "
                "then a Mistral; its max_position_embeddings, "
                f"{preset.max_position_embeddings}, keeps full attention in the original base), or remove "
                "pretrain.attention_window"
            )
        return self

    def _check_mix(self, mix: dict[str, float], where: str) -> None:
        """A mixture names every domain and replay source, and nothing else."""
        trained = [s.name for s in self.sources if s.role in ("domain", "replay")]
        unknown = sorted(set(mix) - set(trained))
        if unknown:
            evaluated = [n for n in unknown if n in {s.name for s in self.sources}]
            hint = f" ({', '.join(evaluated)}: role general_eval, never trained on)" if evaluated else ""
            raise ValueError(
                f"{where} names {', '.join(unknown)}{hint}, not a domain or replay source; "
                f"the training sources are: {', '.join(trained)}"
            )
        missing = [name for name in trained if name not in mix]
        if missing:
            raise ValueError(f"{where} has no weight for {', '.join(missing)}; list every domain and replay source")


# ---------------------------------------------------------------------------------------------------------
# loading


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _explain(error: ValidationError, origin: str) -> ConfigError:
    lines = []
    for item in error.errors():
        where = _dotted(tuple(p for p in item["loc"] if not str(p).startswith("function-after")))
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key (check the spelling; `dapt config --explain` lists the keys)")
        elif item["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        elif where == "(top level)":  # a check across sections: its message names the fields itself
            lines.append(item["msg"].removeprefix("Value error, "))
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {message} (got {item.get('input')!r})")
    return ConfigError(f"{origin}: invalid config:\n  " + "\n  ".join(lines))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (value parsed as YAML; list items by index: `tasks.0.epochs=2`; the index
    one past the end appends: `sources.3={...}` on a list of three)."""
    raw = copy.deepcopy(raw)
    for override in overrides:
        key, sep, value_text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. --set pretrain.max_steps=10")
        parts = key.split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not an index into a list")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        last = parts[-1]
        value = yaml.safe_load(value_text)
        if isinstance(node, list):
            if not last.isdigit() or int(last) > len(node):
                raise ConfigError(
                    f"--set {key}: {last!r} is not an index into the list (it has {len(node)} items; "
                    f"index {len(node)} appends one)"
                )
            if int(last) == len(node):
                node.append(value)
            else:
                node[int(last)] = value
        else:
            node[last] = value
    return raw


def _resolve_paths(config: PipelineConfig, root: Path) -> PipelineConfig:
    def resolve(path: str) -> str:
        return str((root / path).resolve()) if not Path(path).is_absolute() else path

    for source in config.sources:
        source.paths = [resolve(p) for p in source.paths]
    for task in config.tasks:
        if task.data.train:
            task.data.train = resolve(task.data.train)
        if task.data.test:
            task.data.test = resolve(task.data.test)

    def resolve_model(model: str | None) -> str | None:  # a hub id stays as it is; a path is resolved
        local = model and not model.startswith("package:") and (model.startswith((".", "/")) or (root / model).exists())
        return resolve(model) if local and model else model

    config.base.model = resolve_model(config.base.model)
    if config.restore is not None:
        config.restore.instruct = resolve_model(config.restore.instruct)
        config.restore.base_of_instruct = resolve_model(config.restore.base_of_instruct)
    return config


def _check_files(config: PipelineConfig) -> None:
    for i, task in enumerate(config.tasks):
        for field in ("train", "test"):
            path = getattr(task.data, field)
            if path and not Path(path).is_file():
                raise ConfigError(f"tasks[{i}].data.{field}: file {Path(path).name!r} not found (looked in {path})")


def read_yaml_mapping(path: Path, *, what: str, expected: str, empty_ok: bool = False) -> dict[str, Any]:
    """A YAML file that must hold a mapping; a missing file, bad YAML or another shape is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} not found (looked in {path.resolve()})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of {expected}, got {type(raw).__name__}")
    return raw


def load_config(path: Path | str, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML, apply `--set` overrides, validate, and resolve relative paths."""
    path = Path(path)
    raw = read_yaml_mapping(path, what="pipeline file", expected="sections (name, base, sources, ...)")
    return config_from_dict(apply_overrides(raw, overrides or []), origin=str(path), root=path.parent)


def config_from_dict(raw: dict[str, Any], *, origin: str = "config", root: Path | None = None) -> PipelineConfig:
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise _explain(error, origin) from None
    config = _resolve_paths(config, (root or Path.cwd()).resolve())
    _check_files(config)
    return config


def explain_fields(model: type[BaseModel] = PipelineConfig, indent: str = "") -> list[str]:
    """The documentation of every config key, as printed by `dapt config --explain`."""
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = _section_type(annotation)
        default = (
            "" if field.is_required() or nested else f" (default: {field.get_default(call_default_factory=True)!r})"
        )
        doc = field.description or (nested.__doc__ or "").strip().splitlines()[0] if nested else field.description
        lines.append(f"{indent}{name}:{default}  {doc or ''}".rstrip())
        if nested:
            lines.extend(explain_fields(nested, indent + "  "))
    return lines


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section class inside a field's type (`X`, `X | None`, `list[X]`, `list[X] | None`), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        nested = _section_type(argument)
        if nested is not None:
            return nested
    return None
