"""Tokenizer tools: a trained tokenizer, a base extended with domain tokens, fertility, and the CLI."""

import json
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from dapt.cli import main
from dapt.config import BaseConfig, PresetConfig
from dapt.errors import ConfigError
from dapt.model.byte_level import byte_level_tokenizer
from dapt.model.load import load_original_base, save_model_folder
from dapt.tokenizer.compare import compare_tokenizers, measure, render_table
from dapt.tokenizer.extend import PAD_MULTIPLE, check_extendable, extend_base, token_text
from dapt.tokenizer.train import train_tokenizer

DOMAIN_TERMS = [
    "eigenvalue", "eigenvectors", "Chebyshev", "interpolation", "spline", "Jacobian", "Hermitian", "sparse",
    "quadrature", "Kolmogorov", "Smirnov", "convolution", "bandpass", "Butterworth", "periodogram",
]  # fmt: skip
GENERAL_WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "to", "house", "of", "my", "friend"]
# Strings that trip byte-level tokenizers: spaces and newlines runs, tabs, CR, NUL, accents, CJK, emoji
# (with a skin-tone modifier and a ZWJ sequence), right-to-left text and a lone combining mark.
AWKWARD = [
    "",
    " ",
    "  two  spaces  \n\n\n  x",
    "\t\r\n\x00\x7f",
    "Héllo wörld ÆØÅ ÿ",
    "日本語のテキスト 中文",
    "😀👍🏽 👨‍👩‍👧 ☃",
    "مرحبا بالعالم",
    "\u0301e",
    "eigenvalue Chebyshev spline. Jacobian, Hermitian!",
]
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def corpus(words: list[str], documents: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(
            f"{rng.choice(words)} {rng.choice(words)}{rng.choice(['.', ',', ''])}" for _ in range(rng.randint(8, 20))
        )
        for _ in range(documents)
    ]


DOMAIN = corpus(DOMAIN_TERMS + GENERAL_WORDS[:5], 120, seed=0)
GENERAL = corpus(GENERAL_WORDS, 120, seed=1)


@pytest.fixture(scope="module")
def preset_extension():
    """The tiny preset base (byte-level tokenizer, tied embeddings) before and after extension."""
    base_model, base_tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    model.load_state_dict(base_model.state_dict())
    extension = extend_base(model, tokenizer, DOMAIN, add=40, domain_vocab_size=600)
    return base_model.eval(), base_tokenizer, extension.model.eval(), extension.tokenizer, extension.report


@pytest.fixture(scope="module")
def merged_base_extension():
    """A base whose tokenizer has merges (trained on general text) and untied embeddings, extended."""
    base_tokenizer = train_tokenizer(GENERAL, 320)
    config = LlamaConfig(
        vocab_size=len(base_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base_model = LlamaForCausalLM(config).eval()
    model = LlamaForCausalLM(config)
    model.load_state_dict(base_model.state_dict())
    extension = extend_base(model, train_tokenizer(GENERAL, 320), DOMAIN, add=30, domain_vocab_size=600)
    return base_model, base_tokenizer, extension.model.eval(), extension.tokenizer, extension.report


# -- train ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    return train_tokenizer(DOMAIN + GENERAL, 300)


def test_trained_tokenizer_has_the_size_and_special_tokens_asked_for(trained):
    assert len(trained) == 300
    assert (trained.bos_token, trained.eos_token, trained.pad_token) == ("<|endoftext|>", "<|endoftext|>", "<|pad|>")
    assert trained.eos_token_id != trained.pad_token_id
    assert len(trained(" Chebyshev")["input_ids"]) < len(" Chebyshev")  # it learned merges


def test_a_vocab_size_below_the_byte_alphabet_is_refused():
    with pytest.raises(ConfigError, match="at least 258"):
        train_tokenizer(GENERAL, 100)


@HYPOTHESIS
@given(st.text())
def test_trained_tokenizer_round_trips_any_text(trained, text):
    assert trained.decode(trained(text)["input_ids"]) == text


@pytest.mark.parametrize("text", AWKWARD)
def test_trained_tokenizer_round_trips_awkward_text(trained, text):
    assert trained.decode(trained(text)["input_ids"]) == text


# -- extend: the tokenizer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["preset_extension", "merged_base_extension"])
@pytest.mark.parametrize("text", AWKWARD)
def test_extended_tokenizer_round_trips_awkward_text(request, which, text):
    _, _, _, tokenizer, _ = request.getfixturevalue(which)
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@HYPOTHESIS
@given(text=st.text())
def test_extended_tokenizer_round_trips_and_never_costs_more_tokens(merged_base_extension, text):
    _, base_tokenizer, _, tokenizer, report = merged_base_extension
    ids, base_ids = tokenizer(text)["input_ids"], base_tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) <= len(base_ids)
    if max(ids, default=0) < report["old_vocab_size"]:  # no new token used: exactly the base's ids
        assert ids == base_ids


@HYPOTHESIS
@given(text=st.text(alphabet=st.sampled_from(list("eigvalus Chbyshp.\n"))))
def test_extended_preset_round_trips_domain_like_text(preset_extension, text):
    _, base_tokenizer, _, tokenizer, report = preset_extension
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) <= len(base_tokenizer(text)["input_ids"])


def test_extension_lowers_the_token_count_of_its_domain_text(preset_extension, merged_base_extension):
    for _, base_tokenizer, _, tokenizer, report in (preset_extension, merged_base_extension):
        before = sum(len(base_tokenizer(text)["input_ids"]) for text in DOMAIN)
        after = sum(len(tokenizer(text)["input_ids"]) for text in DOMAIN)
        assert after < 0.9 * before
        assert (report["domain_tokens_before"], report["domain_tokens_after"]) == (before, after)
        assert report["fertility"]["after"]["tokens_per_word"] < report["fertility"]["before"]["tokens_per_word"]
    whole_terms = {entry["text"].strip() for entry in merged_base_extension[4]["added_tokens"]} & set(DOMAIN_TERMS)
    assert len(whole_terms) >= 3  # e.g. " spline", " Smirnov", " eigenvalue": the domain's own words


def test_extension_json_describes_every_added_token(preset_extension):
    _, base_tokenizer, _, tokenizer, report = preset_extension
    # At most K: the last slot or two stay free when no candidate's merge chain fits in them.
    assert 35 <= report["added"] <= 40
    assert report["added"] == report["new_vocab_size"] - report["old_vocab_size"] == len(tokenizer) - 258
    assert report["added_ranked"] + report["added_intermediate"] == report["added"]
    for entry in report["added_tokens"]:
        assert tokenizer.convert_ids_to_tokens(entry["id"]) == entry["token"]
        assert "".join(entry["merge"]) == entry["token"] and len(entry["pieces"]) >= 2
        assert entry["role"] == "intermediate" or entry["savings"] == entry["frequency"] * (len(entry["pieces"]) - 1)


def test_coverage_adds_tokens_until_the_estimated_saving_is_reached():
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    report = extend_base(model, tokenizer, DOMAIN, coverage=0.3, domain_vocab_size=600).report
    assert report["domain_tokens_saved_estimated"] >= 0.3 * report["domain_tokens_before"]
    assert report["domain_tokens_saved"] >= report["domain_tokens_saved_estimated"] * 0.9
    assert report["added_ranked"] < report["candidates"]  # it stopped at the target


def test_a_base_that_splits_digits_gets_no_digit_tokens():
    base = train_tokenizer(GENERAL, 320)  # trained on text without digits: no token holds one
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(base), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )
    numbers = [f"{text} 2024 0.70710678 {index * 1234}" for index, text in enumerate(DOMAIN)]
    report = extend_base(model, base, numbers, add=40, domain_vocab_size=600).report
    assert report["added"] >= 35 and not any(any(c.isdigit() for c in e["token"]) for e in report["added_tokens"])


def test_a_tokenizer_that_is_not_byte_level_bpe_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    word_level = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    )
    with pytest.raises(ConfigError, match="supports byte-level BPE"):
        check_extendable(word_level, "some-base")


# -- extend: the embeddings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["preset_extension", "merged_base_extension"])
def test_new_rows_are_the_mean_of_their_pieces_rows(request, which):
    base_model, base_tokenizer, model, _, report = request.getfixturevalue(which)
    tied = report["tied_embeddings"]
    assert tied == (which == "preset_extension")
    tables = [(base_model.get_input_embeddings().weight, model.get_input_embeddings().weight)]
    if not tied:
        tables.append((base_model.get_output_embeddings().weight, model.get_output_embeddings().weight))
    checked = 0
    for entry in report["added_tokens"]:
        text = token_text(entry["token"])
        if text is None:
            continue
        pieces = base_tokenizer(text, add_special_tokens=False)["input_ids"]  # the pieces the base cuts it into
        assert pieces == entry["piece_ids"]
        for old, new in tables:
            torch.testing.assert_close(new[entry["id"]], old[pieces].mean(dim=0))
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("which", ["preset_extension", "merged_base_extension"])
def test_embeddings_are_padded_to_a_multiple_of_64_and_old_rows_are_untouched(request, which):
    base_model, base_tokenizer, model, tokenizer, report = request.getfixturevalue(which)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % PAD_MULTIPLE == 0 and rows >= len(tokenizer) and rows - len(tokenizer) < PAD_MULTIPLE
    assert model.config.vocab_size == rows == report["embedding_rows_after"]
    old_rows = base_model.get_input_embeddings().weight.shape[0]
    assert torch.equal(model.get_input_embeddings().weight[:old_rows], base_model.get_input_embeddings().weight)
    assert torch.equal(model.get_output_embeddings().weight[:old_rows], base_model.get_output_embeddings().weight)


@pytest.mark.parametrize("which", ["preset_extension", "merged_base_extension"])
def test_logits_are_unchanged_on_text_without_new_tokens(request, which):
    base_model, base_tokenizer, model, tokenizer, report = request.getfixturevalue(which)
    text = "ÆØÅ ÿ ☃ 日本 QZX §§ 42\n\t~~"  # nothing here is in the domain text
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids.max() < report["old_vocab_size"]
    assert torch.equal(ids, base_tokenizer(text, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        before, after = base_model(ids).logits, model(ids).logits
    old = before.shape[-1]
    assert after.shape[-1] == report["embedding_rows_after"] > old
    torch.testing.assert_close(after[..., :old], before, rtol=0, atol=0)


# -- fertility -----------------------------------------------------------------------------------------------------


def test_fertility_of_the_byte_level_tokenizer_on_a_fixed_text():
    # Bytes: "a"=1, " bb"=3, " ccc"=4, " dddd"=5 → 13 tokens for 13 characters and 4 words; the space's token
    # belongs to no word, so the words have 1, 2, 3, 4 pieces and two of them ≥ 3.
    numbers = measure(byte_level_tokenizer(), ["a bb ccc dddd"])
    assert numbers == {
        "documents": 1,
        "words": 4,
        "characters": 13,
        "tokens": 13,
        "tokens_per_word": 3.25,
        "tokens_per_char": 1.0,
        "split_share": 0.5,
    }
    # "日本" is 6 bytes (2 characters), " é" is 3 (the space, then é's 2): 9 tokens, 4 characters, 2 words.
    numbers = measure(byte_level_tokenizer(), ["日本 é", "   "])
    assert (numbers["documents"], numbers["words"], numbers["characters"], numbers["tokens"]) == (1, 2, 4, 9)
    assert (numbers["tokens_per_word"], numbers["tokens_per_char"], numbers["split_share"]) == (4.5, 2.25, 0.5)


def test_compare_table_shows_the_change(preset_extension):
    _, base_tokenizer, _, tokenizer, extension = preset_extension
    report = compare_tokenizers({"base": base_tokenizer, "extended": tokenizer}, DOMAIN, GENERAL)
    base, extended = report["tokenizers"]["base"], report["tokenizers"]["extended"]
    assert extended["domain"]["tokens_per_word"] < base["domain"]["tokens_per_word"]
    assert base["domain"]["words"] == extended["domain"]["words"]  # the same documents for both
    table = render_table(report)
    assert "domain tokens per word" in table and "general words in ≥ 3 pieces" in table
    assert f"+{extension['added']}" in table.splitlines()[1]  # the vocabulary row


# -- the command line ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer_cli")
    (folder / "domain.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in DOMAIN))
    (folder / "general.txt").write_text("\n".join(GENERAL))
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, tokenizer, folder / "base")
    return folder


def test_cli_train(files, capsys):
    out = files / "trained"
    assert main(["tokenizer", "train", str(files / "domain.jsonl"), "--vocab-size", "300", "--out", str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (
        len(tokenizer) == 300 and tokenizer.decode(tokenizer("Chebyshev 日本 😀")["input_ids"]) == "Chebyshev 日本 😀"
    )
    assert "300 tokens" in capsys.readouterr().out


def test_cli_extend_then_compare(files, capsys):
    out = files / "extended"
    code = main(
        ["tokenizer", "extend", "--base", str(files / "base"), str(files / "domain.jsonl"), "--out", str(out)]
        + ["--add", "30", "--domain-vocab-size", "600"]
    )
    extension = json.loads((out / "extension.json").read_text())
    assert code == 0 and f"{extension['added']} tokens added" in capsys.readouterr().out
    assert 25 <= extension["added"] <= 30 and extension["new_vocab_size"] == 258 + extension["added"]
    assert extension["embedding_rows_after"] == 320  # 258 + up to 30, rounded up to a multiple of 64
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == 320

    base_args = [
        "tokenizer",
        "compare",
        "--base",
        str(files / "base"),
        "--other",
        str(out),
        str(files / "domain.jsonl"),
    ]
    assert main([*base_args, "--general", str(files / "general.txt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    base, other = report["tokenizers"]["base"], report["tokenizers"]["other"]
    assert other["domain"]["tokens_per_char"] < base["domain"]["tokens_per_char"]
    assert other["general"]["tokens_per_word"] <= base["general"]["tokens_per_word"]
    assert main(base_args) == 0
    table = capsys.readouterr().out
    assert "domain tokens per character" in table and "general" not in table.split("\n", 2)[2]


@pytest.mark.parametrize(
    "command",
    [
        ["tokenizer", "train", "{missing}", "{also}", "--vocab-size", "300", "--out", "{tmp}/t"],
        ["tokenizer", "extend", "--base", "{base}", "{missing}", "{also}", "--out", "{tmp}/e"],
        ["tokenizer", "compare", "--base", "{base}", "{missing}", "{also}"],
        ["tokenizer", "compare", "--base", "{tmp}/no-such-model", "{domain}"],
    ],
)
def test_cli_missing_paths_exit_2_naming_them(files, tmp_path, capsys, command):
    values = {
        "missing": str(tmp_path / "nope.jsonl"),
        "also": str(tmp_path / "gone/*.txt"),
        "tmp": str(tmp_path),
        "base": str(files / "base"),
        "domain": str(files / "domain.jsonl"),
    }
    assert main([part.format(**values) for part in command]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "Traceback" not in error
    if "{missing}" in command:
        assert "nope.jsonl" in error and "gone/*.txt" in error
    else:
        assert "no-such-model" in error
