"""A byte-level tokenizer without some of the 256 byte tokens drops text silently; the base stage says so."""

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dapt.config import BaseConfig, PresetConfig, config_from_dict
from dapt.model.byte_level import BYTE_DECODER, END_OF_TEXT, byte_level_tokenizer, missing_bytes
from dapt.model.load import load_original_base, save_model_folder
from dapt.pipeline import StageContext
from dapt.stages import base as base_stage

DROPPED = (0x04, 0x1D, 0xF1, 0xFF)  # 0xFF never occurs in UTF-8 text; the others do


def holey_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer with the tokens of DROPPED removed (as in SmolLM2's GGUF conversion)."""
    shown = {byte: char for char, byte in BYTE_DECODER.items()}
    alphabet = sorted(char for char in pre_tokenizers.ByteLevel.alphabet() if BYTE_DECODER[char] not in DROPPED)
    core = Tokenizer(models.BPE(vocab={char: index for index, char in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    assert all(shown[byte] not in core.get_vocab() for byte in DROPPED)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )


def test_missing_bytes_are_found_and_really_lose_text():
    tokenizer = holey_tokenizer()
    assert missing_bytes(tokenizer) == sorted(DROPPED)
    text = "end\x04of\x1dtransmission"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == "endoftransmission"  # what the warning is about
    assert missing_bytes(byte_level_tokenizer()) == []


def test_a_tokenizer_the_check_does_not_apply_to_gives_none():
    word_level = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    )
    assert missing_bytes(word_level) is None


def run_base_stage(model_folder, out) -> dict:
    config = config_from_dict(
        {
            "name": "t",
            "base": {"model": str(model_folder)},
            "sources": [{"name": "d", "role": "domain", "kind": "pydoc_topics"}],
        }
    )
    context = StageContext("base", out, {"base": config.base.cache_key(), "seed": 0}, {}, config, config.base)
    out.mkdir()
    return base_stage.run(context)


def test_the_base_stage_warns_with_the_missing_bytes_and_records_them(tmp_path, capsys):
    model, _, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, holey_tokenizer(), tmp_path / "holey")
    metrics = run_base_stage(tmp_path / "holey", tmp_path / "base")
    assert metrics["tokenizer_missing_bytes"] == ["0x04", "0x1D", "0xF1", "0xFF"]
    json.dumps(metrics)  # goes into the manifest as it is
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if "warning" in line)
    assert "3 bytes that UTF-8 text can hold (0x04, 0x1D, 0xF1)" in warning and "dropped" in warning
    assert "1 more never occur" in warning


def test_a_complete_byte_alphabet_gives_no_warning(tmp_path, capsys):
    model, tokenizer, _ = load_original_base(BaseConfig(preset=PresetConfig()))
    save_model_folder(model, tokenizer, tmp_path / "whole")
    assert run_base_stage(tmp_path / "whole", tmp_path / "base")["tokenizer_missing_bytes"] == []
    assert "warning" not in capsys.readouterr().err
