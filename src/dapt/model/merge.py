"""Parameter arithmetic on checkpoint folders: a linear merge and the chat vector, streamed tensor by tensor.

Both are one linear combination of the same tensor in several models:

- merge (interpolate the DAPT base back towards the original): `(1 - w) * dapt + w * original`;
- chat vector (Huang et al. 2024, "Chat Vector"): `dapt + w * (instruct - base_of_instruct)`, for a DAPT base
  continued from `base_of_instruct`, the pretrained model `instruct` was instruction-tuned from.

`combine` reads every input folder's safetensors files lazily (memory-mapped, one tensor at a time) and writes the
result in shards of at most `shard_bytes`, so the peak memory is one output shard plus one tensor of each input in
fp32, never the models: for a 70B model in 2 GiB shards, about 2 GiB plus four copies of its largest tensor (the
128k x 8192 embedding: 4 GiB in fp32 each), where loading three models would take 3 x 140 GB in bf16. The disk
holds the inputs and the one restored model.

What must match, and what happens when it does not:

- the same tensor names and shapes in every input, or a `ConfigError` naming the tensor, both shapes and the model;
- except the vocabulary: when the DAPT base's tokenizer was extended (`vocab:`), its embedding and LM head have
  more rows than the others'. The first rows (the tokens every input has, the same ids: the stage checks the
  tokenizers) are combined; the rows only the DAPT base has (its added tokens) are kept as the DAPT base has them,
  since no other model has a value for them. Any other difference in shape is an error;
- tensors that are not floating point (none in the usual causal LMs) are copied from the DAPT base.

The arithmetic is in fp32 and each tensor is written back in the DAPT base's dtype.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dapt.errors import ConfigError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_BYTES = 2 * 1024**3  # 2 GiB output shards: the peak memory of the writer, and a size every filesystem takes

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class Term:
    """One model of a linear combination: its folder, its coefficient, and what to call it in an error."""

    folder: Path
    coefficient: float
    label: str


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name → the safetensors file of `folder` that holds it (a single `model.safetensors` or the shards
    its `model.safetensors.index.json` lists)."""
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        return {name: folder / file for name, file in index.items()}
    if (folder / SINGLE_FILE).is_file():
        with safe_open(folder / SINGLE_FILE, framework="pt") as handle:
            return {name: folder / SINGLE_FILE for name in handle.keys()}  # noqa: SIM118 (a safe_open, not a dict)
    raise ConfigError(
        f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}; parameter arithmetic needs a Hugging Face folder with "
        "safetensors weights (save the model with `save_pretrained(..., safe_serialization=True)`)"
    )


class LazyWeights:
    """A folder's tensors by name, read one at a time from its memory-mapped safetensors files."""

    def __init__(self, folder: Path, stack: ExitStack) -> None:
        self.folder = folder
        self.files = weight_files(folder)
        self._handles = {
            file: stack.enter_context(safe_open(file, framework="pt")) for file in set(self.files.values())
        }

    def names(self) -> set[str]:
        return set(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.files[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return str(self._handles[self.files[name]].get_slice(name).get_dtype())

    def tensor(self, name: str) -> torch.Tensor:
        return self._handles[self.files[name]].get_tensor(name)


@contextmanager
def opened(folders: list[Path]) -> Iterator[list[LazyWeights]]:
    with ExitStack() as stack:
        yield [LazyWeights(folder, stack) for folder in folders]


def vocabulary_rows(folder: Path) -> int | None:
    """The `vocab_size` in `folder`'s config.json (the rows of its embedding and LM head), None without one."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    settings = json.loads(config.read_text())
    return settings.get("vocab_size", settings.get("text_config", {}).get("vocab_size"))


def check_compatible(
    dapt: LazyWeights, others: list[tuple[LazyWeights, str]], vocab_rows: int | None
) -> dict[str, int]:
    """Names and shapes of `others` against the DAPT base's: a ConfigError for any difference but extra vocabulary
    rows of the DAPT base (tensors of `vocab_rows` rows there, fewer in the others, the other sides the same).
    Returns {tensor name: rows the others have} for the tensors with extra rows."""
    extra_rows: dict[str, int] = {}
    for weights, label in others:
        missing, unexpected = sorted(dapt.names() - weights.names()), sorted(weights.names() - dapt.names())
        if missing or unexpected:
            found = "; ".join(
                f"{what}: {', '.join(names[:3])}{' …' if len(names) > 3 else ''}"
                for what, names in (("missing there", missing), ("not in the DAPT base", unexpected))
                if names
            )
            raise ConfigError(
                f"{label} ({weights.folder}) does not have the DAPT base's tensors ({found}); parameter arithmetic "
                "needs the same architecture (the model family the DAPT base was continued from, tied or untied "
                "embeddings alike)"
            )
        for name in sorted(dapt.names()):
            mine, theirs = dapt.shape(name), weights.shape(name)
            if mine == theirs:
                continue
            vocabulary = vocab_rows is not None and mine[0] == vocab_rows
            if vocabulary and len(mine) == len(theirs) and mine[1:] == theirs[1:] and mine[0] > theirs[0]:
                if extra_rows.get(name, theirs[0]) != theirs[0]:
                    raise ConfigError(f"{name}: the models other than the DAPT base differ in rows among themselves")
                extra_rows[name] = theirs[0]
                continue
            raise ConfigError(
                f"{name}: shape {list(theirs)} in {label} ({weights.folder}) but {list(mine)} in the DAPT base; "
                "parameter arithmetic needs the same architecture (only the DAPT base's vocabulary may be larger, "
                "its added tokens' rows kept as they are)"
            )
    return extra_rows


def _shards(dapt: LazyWeights, shard_bytes: int) -> list[list[str]]:
    """The DAPT base's tensor names in order, cut into shards of at most `shard_bytes` (a larger tensor alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(dapt.names()):
        count = 1
        for side in dapt.shape(name):
            count *= side
        tensor_bytes = count * DTYPE_BYTES.get(dapt.dtype(name), 4)
        if shards[-1] and size + tensor_bytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += tensor_bytes
    return shards


def combine(
    dapt_folder: Path, dapt_coefficient: float, terms: list[Term], out: Path, shard_bytes: int = SHARD_BYTES
) -> dict[str, int]:
    """Write `dapt_coefficient * dapt + sum(term.coefficient * term)` tensor by tensor into `out` (safetensors:
    `model.safetensors`, or shards and their index when it is larger than `shard_bytes`).

    Rows only the DAPT base has (an extended vocabulary) are copied from it unchanged. Returns counts: tensors
    combined, tensors with kept rows, rows kept, non-floating tensors copied, and the parameters written.
    """
    out.mkdir(parents=True, exist_ok=True)
    counts = {"tensors": 0, "tensors_with_added_rows": 0, "added_rows_kept": 0, "copied": 0, "parameters": 0}
    with opened([dapt_folder] + [term.folder for term in terms]) as (dapt, *others):
        pairs = list(zip(others, terms, strict=True))
        extra_rows = check_compatible(dapt, [(w, term.label) for w, term in pairs], vocabulary_rows(dapt_folder))
        shards = _shards(dapt, shard_bytes)
        names = (
            [SINGLE_FILE]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        weight_map = {}
        for file, shard in zip(names, shards, strict=True):
            written = {}
            for name in shard:
                weight_map[name] = file
                dapt_tensor = dapt.tensor(name)
                counts["parameters"] += dapt_tensor.numel()
                if not dapt_tensor.is_floating_point():
                    written[name] = dapt_tensor
                    counts["copied"] += 1
                    continue
                rows = extra_rows.get(name, dapt_tensor.shape[0] if dapt_tensor.dim() else 0)
                result = dapt_tensor.to(torch.float32) * dapt_coefficient
                # the other models' sum first, then added: a chat vector's delta (instruct - base, small beside
                # either) is not rounded at the scale of the weights, and is exactly 0 where the two are equal
                others_sum = sum(term.coefficient * w.tensor(name).to(torch.float32) for w, term in pairs)
                (result[:rows] if dapt_tensor.dim() else result).add_(others_sum)
                if name in extra_rows:
                    result[rows:] = dapt_tensor[rows:].to(torch.float32)  # the added tokens: the DAPT base's own rows
                    counts["tensors_with_added_rows"] += 1
                    counts["added_rows_kept"] += dapt_tensor.shape[0] - rows
                written[name] = result.to(dapt_tensor.dtype).contiguous()
                counts["tensors"] += 1
            save_file(written, out / file, metadata={"format": "pt"})
        if len(shards) > 1:
            total = sum((out / file).stat().st_size for file in names)
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return counts


def merge(dapt_folder: Path, original_folder: Path, weight: float, out: Path, **options: int) -> dict[str, int]:
    """`(1 - weight) * dapt + weight * original`: weight 0 is the DAPT base, 1 the original."""
    return combine(dapt_folder, 1.0 - weight, [Term(original_folder, weight, "the original base")], out, **options)


def chat_vector(
    dapt_folder: Path, instruct_folder: Path, base_of_instruct_folder: Path, weight: float, out: Path, **options: int
) -> dict[str, int]:
    """`dapt + weight * (instruct - base_of_instruct)`: the instruction-tuned delta re-applied to the DAPT base."""
    terms = [
        Term(instruct_folder, weight, "restore.instruct"),
        Term(base_of_instruct_folder, -weight, "restore.base_of_instruct"),
    ]
    return combine(dapt_folder, 1.0, terms, out, **options)
