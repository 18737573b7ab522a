"""Byte-level tokenizers: the byte alphabet, a check that a tokenizer covers it, and a ready-made one.

A byte-level BPE (GPT-2's scheme, used by SmolLM2, Llama 3, Qwen2) turns text into UTF-8 bytes shown as 256
printable stand-in characters and needs every one of them in its vocabulary: a byte the vocabulary lacks is
silently dropped on encoding, so some text cannot be written at all. `missing_bytes` finds such holes (the
SmolLM2 tokenizer converted from its GGUF file lacks 21 bytes, e.g. 0x04, 0x1D and 0xF1).

`byte_level_tokenizer` is used with from-scratch presets (tests, tiny experiments), so a pipeline can run with
no downloaded tokenizer. It is a real Hugging Face `tokenizers` BPE with no merges, so it round-trips any text.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet read backwards: each stand-in character → the byte it shows."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shown = dict(zip(printable, printable, strict=True))
    extra = 0
    for byte in range(256):
        if byte not in shown:
            shown[byte] = 256 + extra
            extra += 1
    return {chr(code): byte for byte, code in shown.items()}


BYTE_DECODER = _byte_decoder()


def has_type(spec: Any, kind: str) -> bool:
    """Whether a `tokenizers` JSON component (or one nested in a Sequence) is of type `kind`."""
    if isinstance(spec, dict):
        return spec.get("type") == kind or any(has_type(value, kind) for value in spec.values())
    if isinstance(spec, list):
        return any(has_type(value, kind) for value in spec)
    return False


def missing_bytes(tokenizer: PreTrainedTokenizerBase) -> list[int] | None:
    """The bytes (0-255) a BPE tokenizer cannot write, or None when the check does not apply.

    Byte-level BPE: the bytes whose stand-in character is not in the vocabulary. BPE with byte fallback
    (SentencePiece-style: Llama 2, Mistral 7B): the bytes without their `<0xNN>` token. Others (WordPiece,
    Unigram, slow tokenizers): None — they have an unknown token instead, or no way to tell.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        return None
    vocab = set(model.get("vocab", {})) | {added["content"] for added in spec.get("added_tokens", [])}
    if has_type(spec.get("pre_tokenizer"), "ByteLevel"):
        return sorted(byte for char, byte in BYTE_DECODER.items() if char not in vocab)
    if model.get("byte_fallback"):
        return [byte for byte in range(256) if f"<0x{byte:02X}>" not in vocab]
    return None


# Bytes that never occur in UTF-8 text (overlong-encoding lead bytes and leads beyond U+10FFFF): a tokenizer
# without them loses nothing when it reads text.
NOT_IN_UTF8 = frozenset({0xC0, 0xC1, *range(0xF5, 0x100)})


def describe_bytes(missing: list[int], shown: int = 12) -> str:
    """What the missing bytes cost, for a warning people can act on: which bytes text can hold, an example."""
    in_text = [byte for byte in missing if byte not in NOT_IN_UTF8]
    listed = ", ".join(f"0x{byte:02X}" for byte in in_text[:shown]) + (", ..." if len(in_text) > shown else "")
    controls = [repr(chr(byte)) for byte in in_text if byte < 0x20 or byte == 0x7F][:3]
    others = len(missing) - len(in_text)
    return (
        f"{len(in_text)} bytes that UTF-8 text can hold ({listed}): characters that need them are silently "
        "dropped when text is encoded"
        + (f" (e.g. the control characters {', '.join(controls)})" if controls else "")
        + (f"; {others} more never occur in UTF-8" if others else "")
    )


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens + `<|endoftext|>` (bos/eos) + `<|pad|>`: vocabulary size 258."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes, as GPT-2 uses
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT)
    tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer
