"""`dapt assess`: the measurements it reports, the rules it recommends by, and the command end to end."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from dapt import assess
from dapt.artifacts import write_manifest
from dapt.assess import (
    GPUS,
    REFERENCE_MODEL,
    RULES,
    DuplicateCounter,
    Evidence,
    ModelShape,
    assess_corpus,
    corpus_tokens,
    cost_row,
    fit_heaps,
    near_duplicate_share,
    recommend,
    render_markdown,
    sample_windows,
    scan_corpus,
    shape_from_params,
    text_digest,
    training_flops,
    vocabulary_growth,
)
from dapt.cli import main
from dapt.config import load_config
from dapt.data.corpus_texts import read_texts
from dapt.data.documents import write_documents
from dapt.errors import DataError
from dapt.model.byte_level import byte_level_tokenizer
from dapt.tokenizer.fertility import tokenizer_fertility
from dapt.tokenizer.train import train_tokenizer


def zipf_documents(exponent: float, words: int, seed: int = 0, per_document: int = 100) -> list[str]:
    """Documents of words w<rank> with ranks drawn from a Zipf distribution of the given exponent."""
    ranks = np.random.default_rng(seed).zipf(exponent, size=words)
    return [" ".join(f"w{rank}" for rank in ranks[i : i + per_document]) for i in range(0, words, per_document)]


# -- vocabulary saturation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("exponent", [1.5, 2.0])
def test_heaps_exponent_of_zipf_text_is_one_over_the_zipf_exponent(exponent):
    fit = fit_heaps(*vocabulary_growth(zipf_documents(exponent, 200_000)))
    assert fit is not None
    assert fit.beta == pytest.approx(1 / exponent, abs=0.05)


def test_discovery_rate_and_saturation_size_agree_with_the_fitted_curve():
    fit = fit_heaps(*vocabulary_growth(zipf_documents(2.0, 100_000)))
    n = 50_000.0
    curve = lambda words: fit.k * words**fit.beta  # noqa: E731
    numeric = (curve(n + 500) - curve(n - 500)) / 1000 * 1000  # new words per 1k words, by finite difference
    assert fit.new_words_per_1k(n) == pytest.approx(numeric, rel=1e-3)
    saturation = fit.words_until(1.0)
    assert saturation > n and fit.new_words_per_1k(saturation) == pytest.approx(1.0)


def test_too_little_text_gives_no_heaps_fit():
    assert fit_heaps(*vocabulary_growth(["only a handful of words here"])) is None


# -- duplicates ------------------------------------------------------------------------------------------------------


def test_exact_duplicates_are_counted_after_normalisation():
    scan = scan_corpus(["one two", "one two  \r\n", "three four five"])
    assert (scan.duplicate_documents, scan.duplicate_words) == (1, 2)
    assert scan.distinct_sample == ["one two", "three four five"]  # the first copy is the one kept


def test_duplicate_counter_counts_every_copy_after_the_first_across_chunks():
    counter = DuplicateCounter()
    assert counter.counts() == (0, 0)
    documents = 5 * DuplicateCounter.FIRST_CHUNK + 10  # over several chunks of the digest arrays
    for index in range(documents):
        counter.add(text_digest(str(index % 1000)), words=index % 1000)
    repeated_words = sum(index % 1000 for index in range(1000, documents))
    assert counter.counts() == (documents - 1000, repeated_words)


def test_planted_near_duplicates_are_found():
    rng = np.random.default_rng(1)
    originals = [" ".join(f"v{x}" for x in rng.integers(0, 50_000, size=200)) for _ in range(20)]
    near_copies = [text.replace(text.split()[100], "changed", 1) for text in originals[:5]]  # 1 word in 200
    share, checked = near_duplicate_share(originals + near_copies)
    assert checked == 25
    assert share == pytest.approx(5 / 25)  # curation would keep one document of each of the 5 pairs


# -- tokenizer fertility --------------------------------------------------------------------------------------------


def test_fertility_with_the_byte_level_tokenizer():
    # One token per byte: 13 tokens for 4 words; "ccc" and "dddd" are cut into >= 3 tokens, "a" and "bb" are not.
    fertility = tokenizer_fertility(byte_level_tokenizer(), ["a bb ccc dddd"])
    assert (fertility.words, fertility.tokens, fertility.split_share) == (4, 13, 0.5)
    assert fertility.tokens_per_word == 3.25


@pytest.mark.xfail(
    strict=True,
    reason="known bug, left to assess.py's owners: with --ppl-tokens below the 512-token window, sample_windows "
    "still scores one whole window (`dapt assess --ppl-tokens 256` scores 512 domain tokens)",
)
def test_the_perplexity_sample_holds_no_more_tokens_than_asked_for():
    windows = sample_windows(byte_level_tokenizer(), zipf_documents(1.5, 3_000), max_tokens=256, seq_len=512)
    assert 0 < sum(len(window) - 1 for window in windows) <= 256


# -- cost --------------------------------------------------------------------------------------------------------------


def test_training_flops_by_hand():
    shape = ModelShape(name="m", params=1e9, layers=10, d_model=1000)
    # 6·N·D = 6e9 · 1e6 = 6e15; attention 12·L·d·T·D = 12·10·1000·2000·1e6 = 2.4e14.
    assert training_flops(shape, tokens=1e6, seq_len=2000) == pytest.approx(6.24e15)
    row = cost_row(shape, 1e6, 2000, "H100", mfu=0.5, price=2.0)
    hours = 6.24e15 / (989e12 * 0.5) / 3600  # 0.003505 GPU-hours
    assert row["gpu_hours"] == pytest.approx(hours) and row["usd"] == pytest.approx(2.0 * hours)


def test_the_7b_sanity_row_lands_in_the_commonly_quoted_range():
    # 6·6.74e9·1e10 + 12·32·4096·4096·1e10 = 4.688e20 FLOPs; A100 at 40% MFU: 1,044 GPU-hours; at $2/h: $2,087.
    row = cost_row(REFERENCE_MODEL, 1e10, 4096, "A100", mfu=0.4, price=2.0)
    assert row["flops"] == pytest.approx(4.6883e20, rel=1e-4)
    assert row["gpu_hours"] == pytest.approx(1043.5, rel=1e-3)
    assert 2_000 < row["usd"] < 10_000


@pytest.mark.parametrize(
    ("params", "layers", "d_model"),
    [(6.74e9, 32, 4096), (13.0e9, 40, 5120)],  # Llama-2-7B and -13B: their parameter counts and real shapes
    ids=["llama-2-7b", "llama-2-13b"],
)
def test_a_model_known_by_size_gets_a_llama_like_shape(params, layers, d_model):
    shape = shape_from_params(params)
    assert (shape.layers, shape.d_model) == (layers, d_model)


def test_every_gpu_has_a_peak_and_a_price():
    assert set(GPUS) == {"A100", "H100", "H200", "L4", "A10G"}
    assert all(gpu.tflops > 0 and gpu.usd_per_hour > 0 for gpu in GPUS.values())


# -- the rules --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence", "choice"),
    [
        (Evidence(domain_tokens=10_000, ppl_ratio=2.0, fertility_ratio=2.0), "try retrieval / prompting first"),
        (Evidence(domain_tokens=5_000_000, ppl_ratio=0.9, fertility_ratio=1.0), "try retrieval / prompting first"),
        (Evidence(domain_tokens=5_000_000, ppl_ratio=1.05, fertility_ratio=2.0), "fine-tune only"),
        (Evidence(domain_tokens=200_000, ppl_ratio=1.5, fertility_ratio=2.0), "task-adaptive pretraining only"),
        (Evidence(domain_tokens=5_000_000, ppl_ratio=1.5, fertility_ratio=1.4), "DAPT + vocabulary extension"),
        (Evidence(domain_tokens=5_000_000, ppl_ratio=1.5, fertility_ratio=1.1), "full DAPT"),
    ],
)
def test_each_rule_decides_on_its_own_evidence(evidence, choice):
    recommendation = recommend(evidence)
    assert recommendation["choice"] == choice
    assert recommendation["reasons"]


def test_the_extension_recommendation_names_the_pipeline_key_to_set():
    recommendation = recommend(Evidence(domain_tokens=5_000_000, ppl_ratio=1.5, fertility_ratio=1.4))
    assert recommendation["choice"] == "DAPT + vocabulary extension"
    assert "vocab: {add: 1000}" in recommendation["reasons"][0]
    tiny = Path(__file__).parents[1] / "integration" / "tiny.yaml"
    assert load_config(tiny, ["vocab.add=1000"]).vocab.add == 1000  # the key it names is a real one


def test_rules_whose_measure_is_missing_are_skipped_and_said_so():
    recommendation = recommend(Evidence(domain_tokens=5_000_000, new_words_per_1k=0.2))
    assert recommendation["choice"] == "full DAPT"
    assert any(r.startswith("not measured: domain/general perplexity") for r in recommendation["reasons"])
    assert any(r.startswith("vocabulary saturated") for r in recommendation["reasons"])


def test_the_rules_table_in_the_docstring_matches_the_rules():
    for number, rule in enumerate(RULES, start=1):
        assert f"| {number} | {rule.when} | {rule.choice} |" in assess.__doc__


# -- reading the corpus ------------------------------------------------------------------------------------------------


def _curate_artifact(run, texts_by_source: dict[str, list[str]], finished: bool = True):
    folder = run / "curate"
    folder.mkdir(parents=True)
    documents = [
        {"id": f"{source}{i}", "text": text, "source": source}
        for source, texts in texts_by_source.items()
        for i, text in enumerate(texts)
    ]
    write_documents(documents, folder / "documents.parquet")
    if finished:
        write_manifest(folder, kind="curate", name="curate", id="x", config={}, inputs={}, metrics={}, timings={})
    return folder


def test_a_run_artifact_gives_domain_and_general_text_by_the_sources_roles(tmp_path):
    (tmp_path / "pipeline.yaml").write_text(
        "sources:\n  - {name: docs, role: domain}\n  - {name: web, role: replay}\n  - {name: ref, role: general_eval}\n"
    )
    folder = _curate_artifact(tmp_path, {"docs": ["d1", "d2"], "web": ["w1"], "ref": ["r1"]})
    domain, notes = read_texts([str(folder)], side="domain", text_field="text", base_dir=tmp_path)
    general, _ = read_texts([str(folder)], side="general", text_field="text", base_dir=tmp_path)
    assert (domain, general) == (["d1", "d2"], ["r1"])
    assert "2 of 4 documents" in notes[0]


def test_an_unfinished_artifact_is_refused(tmp_path):
    folder = _curate_artifact(tmp_path, {"docs": ["d1"]}, finished=False)
    with pytest.raises(DataError, match="no manifest.json"):
        read_texts([str(folder)], side="domain", text_field="text", base_dir=tmp_path)


# -- one pass and a bounded sample -----------------------------------------------------------------------------


def two_kinds_corpus() -> list[str]:
    """1,540 documents: 1,000 of short, varied Zipf text, then 400 of long, repetitive Zipf text, then 40 exact
    copies and 100 near copies (one word changed) of earlier documents. The kinds differ in tokens per word by
    about 5%, so a sample taken from the start of the stream would be off; a random one is not."""
    texts = zipf_documents(1.3, 50_000, seed=5, per_document=50) + zipf_documents(2.5, 40_000, seed=6, per_document=100)
    picked = np.random.default_rng(7).choice(len(texts), size=140, replace=False)
    exact = [texts[i] for i in picked[:40]]
    near = [" ".join(["changed", *texts[i].split()[1:]]) for i in picked[40:]]
    return texts + exact + near


def test_sampled_figures_agree_with_the_whole_corpus():
    """A 10% sample (154 of 1,540 documents) against the corpus measured whole.

    Tolerances, from 8 seeds of this corpus: the estimated token count and the fertility came within 1%
    (asserted: 2%); vocabulary growth is a fit extrapolated from the sample's 10k words to the corpus's 100k, on a
    corpus of two kinds whose curve is not one power law, so β came within 0.11 and the discovery rate at the
    corpus's size within 50% (asserted: 0.12 and 60%). Counts are exact; the near-duplicate share of a sample is a
    lower bound (a pair is seen only when both of its documents were sampled).
    """
    texts = two_kinds_corpus()
    tokenizer = train_tokenizer(zipf_documents(1.8, 30_000, seed=9), vocab_size=600)
    whole = scan_corpus(texts)
    sample = scan_corpus(texts, max_documents=154)
    assert whole.covers_corpus and not sample.covers_corpus and len(sample.sample) == 154

    # counted on the whole stream, exactly, however small the sample
    for scan in (whole, sample):
        assert (scan.documents, scan.chars) == (1_540, sum(map(len, texts)))
        assert scan.words == sum(len(text.split()) for text in texts)
        assert scan.duplicate_documents == 40

    tokens, _ = corpus_tokens(tokenizer, whole)
    assert tokens == sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    estimated, _ = corpus_tokens(tokenizer, sample)
    assert estimated == pytest.approx(tokens, rel=0.02)

    fertility = tokenizer_fertility(tokenizer, texts, max_words=len(texts) * 1_000).tokens_per_word
    assert tokenizer_fertility(tokenizer, sample.sample).tokens_per_word == pytest.approx(fertility, rel=0.02)
    from_the_start = tokenizer_fertility(tokenizer, texts[:154]).tokens_per_word
    assert from_the_start != pytest.approx(fertility, rel=0.02)  # the corpus tells a random sample from a biased one

    whole_fit, sample_fit = fit_heaps(*vocabulary_growth(texts)), fit_heaps(*vocabulary_growth(sample.sample))
    assert sample_fit.beta == pytest.approx(whole_fit.beta, abs=0.12)
    rate = whole_fit.new_words_per_1k(whole.words)
    assert sample_fit.new_words_per_1k(whole.words) == pytest.approx(rate, rel=0.6)

    near, _ = near_duplicate_share(whole.distinct_sample)
    assert near == pytest.approx(100 / 1_500, abs=0.01)
    assert near_duplicate_share(sample.distinct_sample)[0] <= near


def test_a_corpus_larger_than_the_sample_keeps_only_the_sample_in_memory():
    """1,000 documents of 6,000 characters (6 MB, streamed from a generator) through a 20-document sample: the
    pass holds the sample and 12 bytes a document, not the corpus; the counts stay exact."""
    body = " ".join(f"w{rank}" for rank in np.random.default_rng(3).integers(0, 5_000, size=1_200))[:5_984]

    def documents():
        for index in range(1_000):
            yield f"document {index - (index % 100 == 99):>6} " + body  # every 100th repeats the one before

    tracemalloc.start()
    try:
        scan = scan_corpus(documents(), max_documents=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (scan.documents, scan.chars, scan.duplicate_documents) == (1_000, 6_000_000, 10)
    assert len(scan.sample) == 20 and scan.sample_chars == 120_000
    assert peak < 1_000_000  # the sample is 120 kB of text; the corpus 6 MB

    assert scan_corpus(documents(), max_documents=20).sample == scan.sample  # seeded: the same sample again
    budget = scan_corpus(documents(), max_documents=20, max_chars=30_000)
    assert len(budget.sample) == 5 and budget.sample_chars == 30_000  # the character budget binds first
    assert set(budget.sample) < set(scan.sample)  # the start of the same random order


def test_the_report_names_the_sample_its_figures_come_from(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"text": text}) + "\n" for text in zipf_documents(1.5, 30_000, seed=4))
    )
    report = assess_corpus(["corpus.jsonl"], base_dir=tmp_path, sample_documents=60)
    assert (report["documents"], report["words"]) == (300, 30_000)  # counted whole
    assert report["sample"]["documents"] == 60 and not report["sample"]["covers_corpus"]
    markdown = render_markdown(report)
    assert "estimated from a seeded random sample of 60 documents" in markdown
    assert any(
        note.startswith("measured on a seeded random sample of 60 of the 300 documents") for note in report["notes"]
    )


# -- the command -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dapt.config import BaseConfig, PresetConfig
    from dapt.model.load import load_original_base, save_model_folder

    folder = tmp_path_factory.mktemp("tiny_model")
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, tokenizer, folder)
    return folder


def test_assess_end_to_end(tmp_path, monkeypatch, capsys, tiny_model):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "domain").mkdir()
    texts = zipf_documents(1.5, 3_000, seed=2, per_document=300)
    words = texts[1].split()
    texts += [texts[0], " ".join(words[:150] + ["changed"] + words[151:])]  # an exact and a near duplicate
    for i, text in enumerate(texts):
        (tmp_path / "domain" / f"doc{i}.txt").write_text(text)
    (tmp_path / "general.jsonl").write_text(
        "".join(json.dumps({"body": text}) + "\n" for text in zipf_documents(2.0, 2_000, seed=3))
    )
    code = main(
        ["assess", "domain/*.txt", "--general", "general.jsonl", "--text-field", "body"]
        + ["--base", str(tiny_model), "--ppl-tokens", "256", "--gpu", "a100", "--out", "report"]
    )
    assert code == 0
    result = json.loads((tmp_path / "report" / "assess.json").read_text())

    # the corpus, counted with the base's own tokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    assert (result["documents"], result["words"], result["tokens"]) == (12, 3_600, tokens)
    assert result["tokens_exact"]
    assert result["duplicates"]["exact_documents"] == 1
    assert result["duplicates"]["near_share"] == pytest.approx(1 / 11)  # of the 11 distinct documents
    # an untrained model predicts nearly uniformly: its perplexity is about its vocabulary's size
    vocabulary = len(tokenizer)
    for side in ("domain_ppl", "general_ppl"):
        assert 0.8 * vocabulary < result[side] < 1.25 * vocabulary
    # the cost is that of the base itself on this corpus, at the GPU asked for
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    shape = ModelShape(
        name="base",
        params=sum(p.numel() for p in model.parameters()),
        layers=model.config.num_hidden_layers,
        d_model=model.config.hidden_size,
    )
    one_epoch, three_epochs = result["cost"]["runs"]
    assert result["cost"]["assumptions"]["gpu"] == "A100"
    assert (one_epoch["tokens"], three_epochs["tokens"]) == (tokens, 3 * tokens)
    assert one_epoch["flops"] == pytest.approx(training_flops(shape, tokens, result["cost"]["assumptions"]["seq_len"]))
    # 12k tokens are far too few to move a model's weights: the verdict says so, with the count, everywhere
    recommendation = result["recommendation"]
    assert recommendation["choice"] == "try retrieval / prompting first"
    assert recommendation["reasons"][0].startswith(f"domain tokens {tokens:,} < 50,000")
    assert f"**Recommendation: {recommendation['choice']}**" in (tmp_path / "report" / "assess.md").read_text()
    assert f"recommendation: {recommendation['choice']}" in capsys.readouterr().out


def test_assess_without_a_base_counts_words(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.md").write_text("a few words of domain text " * 20)
    assert main(["assess", "notes.md"]) == 0
    result = json.loads((tmp_path / "assess" / "assess.json").read_text())
    assert (result["tokens"], result["domain_ppl"], result["general_ppl"]) == (120, None, None)
    assert result["recommendation"]["choice"] == "try retrieval / prompting first"


def test_a_path_matching_nothing_is_a_user_error_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["assess", "no/such/*.txt"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no/such/*.txt" in error


def test_assess_names_a_default_curation_rule_that_would_drop_much_of_the_corpus():
    terse = [f"Term {n}: a short entry." for n in range(8)]  # under curate.min_chars (50): dropped as too_short
    prose = [
        f"Document {n} explains how the solver chooses its step size from the local error estimate, and why a "
        "smaller tolerance costs more function evaluations but gives a more accurate result in the end."
        for n in range(12)
    ]
    found = assess.curation_rule_drops(terse + prose)
    assert found["checked_documents"] == 20
    assert found["dropped_by_reason"] == {"too_short": 8}
    [drop] = found["heavy_drops"]
    assert (drop["reason"], drop["setting"], drop["share"]) == ("too_short", "curate.min_chars", 0.4)
    assert "change curate.min_chars" in drop["message"]
    assert assess.curation_rule_drops(prose)["heavy_drops"] == []
