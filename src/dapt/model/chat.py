"""Prompt/response pairs as token ids for instruction tuning, with the loss on the response only.

The tokenizer's own chat template is used when it has one (the format the model was trained to
follow); otherwise a documented built-in template:

    ### Instruction:
    {prompt}

    ### Response:
    {response}<eos>
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from dapt.errors import ConfigError

BUILTIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
IGNORE = -100  # label of tokens that take no loss (prompt, padding): cross_entropy's ignore_index
MIN_PROMPT_TOKENS = 8


def _chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
    )


def uses_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The tokens that precede the response: the model generates from here."""
    if uses_chat_template(tokenizer):
        return _chat(tokenizer, [{"role": "user", "content": prompt}], generation_prompt=True)
    return tokenizer(BUILTIN_TEMPLATE.format(prompt=prompt), add_special_tokens=False)["input_ids"]


def response_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, prefix: list[int]) -> list[int]:
    """The response's tokens, end-of-turn included, as they follow `prefix` (the prompt's tokens)."""
    if uses_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        full = _chat(tokenizer, messages, generation_prompt=False)
        if full[: len(prefix)] == prefix:
            return full[len(prefix) :]
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one pair; labels are IGNORE on the prompt, so only the response is learned.

    Too long: the prompt is cut from the left (its end, next to the response, matters most), keeping at
    least MIN_PROMPT_TOKENS; then the response is cut.
    """
    prefix = prompt_ids(tokenizer, prompt)
    answer = response_ids(tokenizer, prompt, response, prefix)
    answer = answer[: max(1, max_length - MIN_PROMPT_TOKENS)]
    prefix = prefix[-(max_length - len(answer)) :]
    return prefix + answer, [IGNORE] * len(prefix) + answer


def pad_pairs(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels (IGNORE on padding), each (batch, longest)."""
    longest = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), longest), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), longest), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(pairs):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def generate_answer(model_path: Path, prompt: str, *, max_new_tokens: int = 64, raw: bool = False) -> str:
    """Greedy answer of a causal LM folder (or an artifact folder holding `model/`) to one prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_path / "model" if (model_path / "model" / "config.json").is_file() else model_path
    if not (folder / "config.json").is_file():
        raise ConfigError(f"--model: no model in {model_path} (looked for config.json there and in model/)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if raw else prompt_ids(tokenizer, prompt)
    output = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()
