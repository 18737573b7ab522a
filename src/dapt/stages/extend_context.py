"""extend-context: the base with a longer context window (pretrain.context), for pretraining to teach it.

Only config.json changes: the RoPE scaling and max_position_embeddings (`dapt.model.context`). The weights and
tokenizer files are hard-linked from the base (no extra disk for multi-GB weights; copied where links are not
possible), so a 70B base is extended in a second without loading it. The rotary embedding's frequencies are not
weights: transformers computes them from the config when it builds the model, so the new window takes effect
when the folder is loaded. Continued pretraining (`pretrain`, with pretrain.seq_len up to the new length) then
adapts the model to the rescaled positions; evaluate-lm measures both bases at the new and the old window.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from dapt.config import ContextConfig
from dapt.model.context import extend_context
from dapt.stages.context import StageContext
from dapt.stages.pretrain import link_or_copy_folder


def run(context: StageContext) -> dict[str, Any]:
    settings = context.section_of(ContextConfig)
    base = context.inputs["base"].path / "model"
    config = AutoConfig.from_pretrained(base)
    changed = extend_context(config, settings)
    target = context.out / "model"
    link_or_copy_folder(base, target)
    (target / "config.json").unlink()  # a hard link to the base's file: replaced, never written through
    config.save_pretrained(target)
    context.log(
        f"context window {changed['old_window']} → {changed['new_window']} tokens "
        f"(rope {changed['rope_after'].get('rope_type', 'default')}, factor {changed['rope_after'].get('factor', 1)}, "
        f"theta {changed['rope_after'].get('rope_theta')})"
    )
    return {"context": changed}
