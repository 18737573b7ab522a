"""The Gopher quality / repetition and C4 blocks: each rule at its threshold's boundary, edge cases, config."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from dapt.config import CurateConfig, GopherRepetitionConfig, config_from_dict
from dapt.data.documents import DOCUMENT_SCHEMA
from dapt.data.executor import curate_documents
from dapt.data.quality import C4Filter, GopherQualityFilter, GopherRepetitionFilter, quality_blocks
from dapt.errors import ConfigError

WORDS = "the spline of a sample and the kernel to estimate with data that have signal filters".split()


def prose(seed: int, n_words: int = 120) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < n_words:
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(10)).capitalize() + ".")
    lines, line = [], []
    for sentence in sentences:  # lines of about 3 sentences, as in a wrapped paragraph
        line.append(sentence)
        if len(line) == 3:
            lines.append(" ".join(line))
            line = []
    return "\n".join(lines + [" ".join(line)] if line else lines)


def only(block_class, **rule):
    """The block with every rule off but `rule`."""
    off = {
        GopherQualityFilter: dict.fromkeys(
            [
                "min_words",
                "max_words",
                "min_mean_word_chars",
                "max_mean_word_chars",
                "max_symbol_word_ratio",
                "max_bullet_lines_ratio",
                "max_ellipsis_lines_ratio",
                "min_alpha_words_ratio",
                "min_stop_words",
            ]
        ),
        GopherRepetitionFilter: {
            **dict.fromkeys(
                [
                    "max_dup_line_fraction",
                    "max_dup_paragraph_fraction",
                    "max_dup_line_char_fraction",
                    "max_dup_paragraph_char_fraction",
                ]
            ),
            "max_top_ngram_char_fraction": {},
            "max_dup_ngram_char_fraction": {},
        },
        C4Filter: {
            "lorem_ipsum": False,
            "curly_bracket": False,
            "max_javascript_lines_ratio": None,
            "max_policy_lines_ratio": None,
            "min_terminal_punct_lines_ratio": None,
            "min_sentences": None,
        },
    }[block_class]
    return block_class(**{**off, **rule})


def reason(block, text: str) -> str | None:
    rejection = block("doc", text)
    return rejection.reason if rejection else None


@pytest.mark.parametrize("text", ["", "x" * 200_000, "é" * 50 + "\n" * 30, "\u200b\u00a0  \t\n"])
def test_every_block_takes_degenerate_text_without_error(text: str) -> None:
    for block in quality_blocks():
        block("doc", text)  # no exception; whatever the verdict, it has a reason if any
    assert reason(GopherQualityFilter(), "x" * 200_000) == "gopher_long_words"  # one 200k-char "word"


def test_default_blocks_keep_prose_and_count_what_they_saw() -> None:
    blocks = quality_blocks()
    assert [block.name for block in blocks] == ["gopher_quality", "gopher_repetition", "c4"]
    for seed in range(20):
        assert [block("doc", prose(seed)) for block in blocks] == [None, None, None]
    assert [(block.seen, block.dropped) for block in blocks] == [(20, 0)] * 3


def test_word_count_boundaries() -> None:
    block = only(GopherQualityFilter, min_words=5, max_words=7)
    assert reason(block, "one two three four") == "gopher_too_few_words"
    assert reason(block, "one two three four five") is None
    assert reason(block, "one two three four five six seven") is None
    assert reason(block, "one two three four five six seven eight") == "gopher_too_many_words"
    # punctuation-only tokens (doctest prompts, rst underlines) are not words
    assert reason(block, ">>> one two\n===== three four") == "gopher_too_few_words"


def test_mean_word_length_boundaries() -> None:
    block = only(GopherQualityFilter, min_mean_word_chars=3.0, max_mean_word_chars=10.0)
    assert reason(block, "abc abc abc") is None  # exactly 3
    assert reason(block, "ab abc abc") == "gopher_short_words"
    assert reason(block, "abcdefghij abcdefghij") is None  # exactly 10
    rejection = block("doc", "abcdefghijk abcdefghij")
    assert rejection.reason == "gopher_long_words"
    assert rejection.detail == "mean word length 10.50 > max_mean_word_chars 10.0"


def test_hash_and_ellipsis_per_word() -> None:
    block = only(GopherQualityFilter, max_symbol_word_ratio=0.1)
    ten_words = " ".join(["word"] * 9)
    assert reason(block, ten_words + " #tag") is None  # 1 per 10 words
    assert reason(block, ten_words + " #tag …") == "gopher_symbol_word_ratio"
    assert "2 '#'/'...' for 10 words: 0.200 > max_symbol_word_ratio 0.1" in block("d", ten_words + " #a ...").detail


def test_bullet_and_ellipsis_lines() -> None:
    bullets = only(GopherQualityFilter, max_bullet_lines_ratio=0.5)
    assert reason(bullets, "• one\n- two\nthree\nfour") is None  # half
    assert reason(bullets, "• one\n- two\n* three\nfour") == "gopher_bullet_lines"
    ellipsis = only(GopherQualityFilter, max_ellipsis_lines_ratio=0.3)
    assert reason(ellipsis, "read more...\nsecond line\nthird line\nfourth") is None  # 0.25
    assert reason(ellipsis, "read more...\nand more…\nthird line\nfourth") == "gopher_ellipsis_lines"


def test_alpha_words_and_stop_words() -> None:
    alpha = only(GopherQualityFilter, min_alpha_words_ratio=0.8)
    assert reason(alpha, "a b c d 1") is None
    assert reason(alpha, "a b c 1 2") == "gopher_alpha_words"
    stop = only(GopherQualityFilter, min_stop_words=2)
    assert reason(stop, "The mean of an array") is None
    assert reason(stop, "Das Mittel eines Feldes mit Werten") == "gopher_stop_words"
    assert reason(stop, "thesis theory often") == "gopher_stop_words"  # whole words only


def test_duplicate_lines_and_paragraphs() -> None:
    lines = only(GopherRepetitionFilter, max_dup_line_fraction=0.3)
    unique = [f"line number {i} says something" for i in range(7)]
    assert reason(lines, "\n".join(unique + unique[:3])) is None  # 3 of 10
    rejection = lines("doc", "\n".join(unique + unique[:4]))
    assert rejection.reason == "dup_line_fraction"
    assert rejection.detail == "4 of 11 lines repeat an earlier one: 0.364 > max_dup_line_fraction 0.3"
    chars = only(GopherRepetitionFilter, max_dup_line_char_fraction=0.2)
    long_line = "a long line " * 20
    assert reason(chars, "\n".join(["short"] * 5 + [long_line, long_line])) == "dup_line_char_fraction"
    assert reason(chars, "\n".join(["short"] * 5 + [long_line])) is None
    paragraphs = only(GopherRepetitionFilter, max_dup_paragraph_fraction=0.3)
    para = [prose(seed, 30) for seed in range(3)]
    assert reason(paragraphs, "\n\n".join(para + para[:1])) is None  # 1 of 4
    assert reason(paragraphs, "\n\n".join(para + para[:2])) == "dup_paragraph_fraction"


def test_top_ngram_char_fraction() -> None:
    block = only(GopherRepetitionFilter, max_top_ngram_char_fraction={2: 0.2})
    assert reason(block, prose(1)) is None
    spam = "buy now " * 20 + prose(2, 40)
    rejection = block("doc", spam)
    assert rejection.reason == "top_ngram_char_fraction"
    assert rejection.detail.startswith("the 2-gram 'buy now' (20x) holds")
    # exactly at the threshold is kept: 'ab cd' twice = 8 of 40 characters
    assert reason(block, "ab cd ab cd " + " ".join(f"w{i}xxx" for i in range(8))) is None


def test_duplicate_ngram_char_fraction() -> None:
    block = only(GopherRepetitionFilter, max_dup_ngram_char_fraction={5: 0.15, 10: 0.10})
    assert reason(block, prose(3)) is None
    sentence = "the quick brown fox jumps over the lazy dog again"
    pasted_twice = prose(4, 20) + " " + sentence + " " + prose(5, 10) + " " + sentence  # ~40 of 200 chars
    rejection = block("doc", pasted_twice)
    assert rejection.reason == "dup_ngram_char_fraction"
    assert "repeated 5-grams cover" in rejection.detail
    # case and punctuation do not hide a repeat
    assert reason(block, prose(4, 20) + " " + sentence + ". " + sentence.upper() + "!") == "dup_ngram_char_fraction"


def test_longer_ngram_rules_still_run_when_a_shorter_one_passes() -> None:
    sentence = "the quick brown fox jumps over the lazy dog again"
    pasted_twice = prose(4, 20) + " " + sentence + " " + prose(5, 10) + " " + sentence
    # the 5-gram rule passes at 0.99, the 10-gram one (a lower threshold) must still be checked
    rejection = only(GopherRepetitionFilter, max_dup_ngram_char_fraction={5: 0.99, 10: 0.05})("doc", pasted_twice)
    assert rejection is not None and "repeated 10-grams cover" in rejection.detail
    assert only(GopherRepetitionFilter, max_dup_ngram_char_fraction={5: 0.99, 10: 0.99})("doc", pasted_twice) is None


@pytest.mark.parametrize("seed", range(20))
def test_repeated_ngram_share_is_the_characters_of_the_covered_words(seed: int) -> None:
    rng = random.Random(seed)
    words = [rng.choice(["ab", "c", "def", "ghij"]) for _ in range(rng.randrange(8, 60))]
    total = sum(map(len, words))
    block = only(GopherRepetitionFilter, max_dup_ngram_char_fraction={n: 0.0 for n in range(2, 8)})
    reported = {r.detail.split("-grams")[0].split()[-1]: r.detail for r in block.failures(" ".join(words))}
    for n in range(2, 8):
        covered = set()
        for i in range(1, len(words) - n + 1):
            if any(words[i : i + n] == words[j : j + n] for j in range(i)):
                covered.update(range(i, i + n))
        if not covered:
            assert str(n) not in reported
            continue
        share = sum(len(words[i]) for i in covered) / total
        assert f"repeated {n}-grams cover {share:.3f} of the characters" in reported[str(n)]


def test_c4_rules() -> None:
    assert reason(only(C4Filter, lorem_ipsum=True), prose(1) + " Lorem ipsum dolor sit amet.") == "lorem_ipsum"
    code = "Use it as follows:\n    if x {\n        y()\n    }"
    assert reason(only(C4Filter, curly_bracket=True), code) == "curly_bracket"
    assert reason(C4Filter(), code) is None  # off by default: documentation has code
    js = only(C4Filter, max_javascript_lines_ratio=0.5)
    assert reason(js, "Please enable JavaScript.\nThis site needs Javascript to work.\nContact") == "javascript_lines"
    assert reason(js, "Please enable JavaScript.\nSome text.") is None  # half
    policy = only(C4Filter, max_policy_lines_ratio=0.5)
    assert reason(policy, "This site uses cookies.\nRead our Privacy Policy.\nOK") == "policy_lines"
    punct = only(C4Filter, min_terminal_punct_lines_ratio=0.5)
    assert reason(punct, "A sentence.\nno end") is None
    assert reason(punct, "A sentence.\nno end\nnor here") == "terminal_punctuation"
    sentences = only(C4Filter, min_sentences=3)
    assert reason(sentences, "One. Two! Three? (Four.)") is None
    assert reason(sentences, "One. Two! e.g.three, np.array(x)") == "too_few_sentences"  # no space: not an end
    assert sentences("d", "No sentence at all").detail == "0 sentence(s) < min_sentences 3"


def test_mixed_scripts_and_unicode_words() -> None:
    block = GopherQualityFilter()
    text = "Die Funktion berechnet the mean of values. 関数は平均を計算します。 Ελληνικά κείμενα και the data."
    assert block("doc", text) is None


def table(texts: list[str]) -> pa.Table:
    ids = [f"doc{i}" for i in range(len(texts))]
    return pa.table(
        {"id": ids, "text": texts, "source": ["t"] * len(texts), "meta": ["{}"] * len(texts)}, schema=DOCUMENT_SCHEMA
    )


def test_curate_drops_with_the_config_and_counts_per_block() -> None:
    texts = [prose(seed) for seed in range(4)] + ["buy now " * 60 + prose(9, 30)]
    result = curate_documents(table(texts))
    rows = {row["id"]: row for row in result.ledger.to_pylist()}
    assert rows.keys() == {"doc4"}
    assert (rows["doc4"]["block"], rows["doc4"]["reason"]) == ("gopher_repetition", "top_ngram_char_fraction")
    assert rows["doc4"]["detail"].startswith("the 2-gram 'buy now' (60x) holds 0.")
    assert result.stats["blocks"]["gopher_repetition"] == {"seen": 5, "dropped": 1}
    assert result.stats["blocks"]["gopher_quality"] == {"seen": 5, "dropped": 0}
    off = CurateConfig.model_validate({"gopher_repetition": {"enabled": False}}).model_dump()
    result = curate_documents(table(texts), **off)
    assert "gopher_repetition" not in result.stats["blocks"]
    assert result.ledger.num_rows == 0
    strict = CurateConfig.model_validate({"gopher_quality": {"min_words": 200}}).model_dump()
    result = curate_documents(table(texts), **strict)
    assert set(result.ledger.column("reason").to_pylist()) == {"gopher_too_few_words"}


def test_config_errors_name_the_field() -> None:
    base = {"name": "x", "base": {"preset": {}}, "sources": [{"name": "s", "role": "domain", "paths": ["a.txt"]}]}
    for curate, expected in (
        ({"gopher_quality": {"min_words": 100, "max_words": 50}}, "min_words 100 is above max_words 50"),
        ({"gopher_repetition": {"max_top_ngram_char_fraction": {2: 1.5}}}, "max_top_ngram_char_fraction[2]"),
        ({"gopher_repetition": {"max_dup_ngram_char_fraction": {0: 0.1}}}, "n-gram length 0"),
        ({"c4": {"curly_brackets": True}}, "curate.c4.curly_brackets: unknown key"),
        ({"gopher_quality": {"max_bullet_lines_ratio": 2}}, "curate.gopher_quality.max_bullet_lines_ratio"),
    ):
        with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            config_from_dict({**base, "curate": curate}, origin="p.yaml", root=".")
    assert GopherRepetitionConfig(max_top_ngram_char_fraction={}).max_top_ngram_char_fraction == {}
