"""The curation defaults, each declared once: the config's fields (`dapt.config`) and the filters in `dapt.data`
take their defaults from here, with the measurements that chose them beside each.

It sits below both (it imports nothing of dapt), so the config does not import the filters it configures.
"""

from __future__ import annotations

# === length and quality blocks, decontamination, the heavy-drop warning (dapt.data.curate) ==================
# Defaults measured on SciPy 1.17 and Python 3.11 stdlib docstrings (>= 200 chars, ~5.1k docs), which are
# the documentation we want to keep, code examples included:
# - length floor: low, for continued pretraining, where a short domain text still teaches the field's vocabulary.
#   At 200 chars and 20 words (a web-crawl floor) a glossary of a technical field lost 42% of its entries ("Hessian:
#   the matrix of second partial derivatives." is 50 chars, 7 words). Below 50 chars and 5 words are fragments
#   ("See also.", "Deprecated."); the quality and Gopher rules still drop short junk (symbol soup, no stop word).
#   0.1% of SciPy's docstrings of >= 200 chars have < 20 words (bare lists of names); the floor now keeps them.
# - the largest SciPy docstring (scipy.stats' module doc) is 30k chars; 100k leaves room and stops dumps.
# - symbol ratio: SciPy's 99.9th percentile is 0.18, its maximum 0.30 (an rst title block of `=`).
# - alpha-word ratio: the lowest SciPy docstring is at 0.39 (a 0/1 array printed in an example); a
#   table of numbers is below 0.1.
# - mean word length: SciPy's maximum is 13.5 chars; base64 lines are single 76-char "words".
DEFAULT_MIN_CHARS = 50
DEFAULT_MAX_CHARS = 100_000
DEFAULT_MIN_WORDS = 5
DEFAULT_MAX_SYMBOL_RATIO = 0.3
DEFAULT_MIN_ALPHA_WORDS_RATIO = 0.3
DEFAULT_MAX_MEAN_WORD_CHARS = 20.0
# Decontamination: SciPy's docstrings share templated paragraphs (the `seed` / RandomState text, the
# distributions' shape-parameter text). Counting those as leaks removed 44% of the corpus for a 20% test
# split; a test example's own text occurs in one or two documents. GPT-3 likewise ignored frequent 13-grams.
DEFAULT_DECONTAMINATE_MAX_DOC_FREQUENCY = 10
# One rule dropping more than this share of one source's documents is reported with the setting to change. A rule
# meant to remove noise that takes a fifth of a source more likely misfits that source than cleans it (min_chars
# 200 dropped 42% of a glossary); on the demo's docstrings no rule drops more than a few percent of a source.
DEFAULT_MAX_RULE_DROP_SHARE = 0.2

# === language identification (dapt.data.langid) ==============================================
# Measured by bench/langid_choice.py (py3langid, per-paragraph rule). Kept share of: the demo's 5,106 SciPy +
# stdlib docstrings (English with code), 300 of them with a quarter of their length in another language
# appended ("mixed", should be kept), 40 English documents (kept) and 1,160 in 29 other languages (dropped):
#   min_confidence 0.5, min_language_share 0.5:  demo 0.999   mixed 0.54   English 1.0   other 0.0009
#   min_confidence 0.5, min_language_share 0.3:  demo 1.0     mixed 0.89   English 1.0   other 0.0009
#   min_confidence 0.5, min_language_share 0.2:  demo 1.0     mixed 0.95   English 1.0   other 0.0009
#   min_confidence 0.8, min_language_share 0.2:  demo 1.0     mixed 0.92   English 1.0   other 0.021
# A docstring's English is in a few prose paragraphs among code, so a quarter of foreign text can outvote it:
# 0.2 keeps a document when a fifth of its clear text is in a kept language. Higher confidence lets more
# foreign documents through (no paragraph passes, so nothing is decided).
# English by default: the demo, and the Gopher stop-word rule, are English; a corpus in another language sets
# `languages` (and gopher_quality.min_stop_words: null), and `languages: []` keeps every language.
DEFAULT_LANGUAGES: tuple[str, ...] = ("en",)
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_MIN_LANGUAGE_SHARE = 0.2
# Paragraphs shorter than this (titles, "Returns", a lone `x : int`) are too short to label reliably.
DEFAULT_LANGID_MIN_PARAGRAPH_CHARS = 30

# === toxicity (dapt.data.toxicity): alt-profanity-check scores; see that module for the measurements =======
DEFAULT_TOXICITY_MAX_SCORE = 0.95
DEFAULT_TOXICITY_MIN_PARAGRAPH_CHARS = 30

# === near-duplicate detection (dapt.data.near_dup): MinHash + LSH; see that module for the measurements ====
DEFAULT_SHINGLE = 5
DEFAULT_NUM_PERM = 512
DEFAULT_BANDS = 64
DEFAULT_THRESHOLD = 0.8

# === Gopher and C4 rules (dapt.data.quality) ==================================================================
# --- Gopher quality rules (Rae et al. 2021, appendix A.1.1). "drops N" = documents of the 5,106 demo
# docstrings (2,908 SciPy + 2,198 stdlib) that the rule alone drops.
# Word count in [50, 100000]: published. 50 words drops 1,502 (29%): short docstrings of one function are
# real documentation, and the length block's min_words (20) already drops bare lists of names. Off.
DEFAULT_GOPHER_MIN_WORDS: int | None = None
DEFAULT_GOPHER_MAX_WORDS: int | None = 100_000  # drops 0
# Mean word length in [3, 10]: published. 10 drops 75 (module indexes of long dotted names,
# `__array_namespace_info__.capabilities`); 15 drops 12 (all from the stdlib). 3 drops 1.
DEFAULT_GOPHER_MIN_MEAN_WORD_CHARS: float | None = 3.0
DEFAULT_GOPHER_MAX_MEAN_WORD_CHARS: float | None = 15.0
# '#' and '...' per word <= 0.1: published; drops 11 (doctests, where `...` is the continuation prompt). Kept.
DEFAULT_GOPHER_MAX_SYMBOL_WORD_RATIO: float | None = 0.1
# Share of lines starting with a bullet <= 0.9, ending with an ellipsis <= 0.3: published; each drops 0.
DEFAULT_GOPHER_MAX_BULLET_LINES_RATIO: float | None = 0.9
DEFAULT_GOPHER_MAX_ELLIPSIS_LINES_RATIO: float | None = 0.3
# Share of words with a letter >= 0.8: published; drops 681 (13%) whose examples print arrays of numbers.
# Off: the quality block's min_alpha_words_ratio (0.3) is the one set for this domain.
DEFAULT_GOPHER_MIN_ALPHA_WORDS_RATIO: float | None = None
# At least 2 of the 8 stop words: published (counted as occurrences, as datatrove does; the paper's wording
# allows "2 different ones"); drops 166 (3.3%), terse but real English (`Survival function of X.
# Parameters x : array_like ...`). At least 1 drops 36 (9 SciPy, 27 stdlib) and still catches keyword soup.
DEFAULT_GOPHER_MIN_STOP_WORDS: int | None = 1

# --- Gopher repetition rules (Rae et al. 2021, table A1).
# Lines / paragraphs: published thresholds; drop 11 / 1 (by count) and 16 / 1 (by characters).
DEFAULT_MAX_DUP_LINE_FRACTION: float | None = 0.3
DEFAULT_MAX_DUP_PARAGRAPH_FRACTION: float | None = 0.3
DEFAULT_MAX_DUP_LINE_CHAR_FRACTION: float | None = 0.2
DEFAULT_MAX_DUP_PARAGRAPH_CHAR_FRACTION: float | None = 0.2
# n-grams: the published thresholds (top 2/3/4-gram 0.20/0.18/0.16; repeated 5..10-grams 0.15 down to 0.10)
# drop 461 and 433 (9% and 8%): numpydoc repeats a parameter's description in its Returns section, and in a
# 60-word docstring one phrase said twice ('probability density function') is 20% of the characters. Three
# times the published values (same slope over n) drop 5 and 30, and still drop degenerate text ("buy now
# buy now ...", a sentence pasted twice into a short text: tests/data/test_quality.py).
DEFAULT_MAX_TOP_NGRAM_CHAR_FRACTION: dict[int, float] = {2: 0.60, 3: 0.54, 4: 0.48}
DEFAULT_MAX_DUP_NGRAM_CHAR_FRACTION: dict[int, float] = {5: 0.45, 6: 0.42, 7: 0.39, 8: 0.36, 9: 0.33, 10: 0.30}

# --- C4 rules (Raffel et al. 2020, section 2.2), made document-level as FineWeb (Penedo et al. 2024) did:
# C4 deletes lines; a block here keeps or drops whole documents, so a line rule becomes a share of lines.
DEFAULT_C4_LOREM_IPSUM = True  # drops 0
# C4 drops any page with '{' (to remove code): 976 (19%) of a code-documentation corpus. Off.
DEFAULT_C4_CURLY_BRACKET = False
# Lines mentioning javascript / cookie or terms-of-use notices: C4 deletes them; we drop a document when
# they are more than half its lines (a notice page, not a page that mentions one). Each drops 0.
DEFAULT_C4_MAX_JAVASCRIPT_LINES_RATIO: float | None = 0.5
DEFAULT_C4_MAX_POLICY_LINES_RATIO: float | None = 0.5
# Share of lines ending in terminal punctuation: C4 keeps only such lines; FineWeb drops a document below
# 0.12. Parameter lists (`x : array_like`) end in none: 0.12 drops 329 (6%). Off.
DEFAULT_C4_MIN_TERMINAL_PUNCT_LINES_RATIO: float | None = None
# Pages with fewer than 3 sentences (a '.', '!' or '?' before a space or the end): published; drops 784 (15%),
# 2 drops 335, 1 drops 55: a docstring's parameter list has no sentences. Off.
DEFAULT_C4_MIN_SENTENCES: int | None = None

# === PII scrubbing (dapt.data.pii): every kind it knows, all on by default, in the order they run (secrets first:
# see that module)
PII_KINDS: tuple[str, ...] = ("secret", "email", "iban", "card", "ip", "phone")
