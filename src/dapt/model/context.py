"""A longer context window for a RoPE model: the scaling written into its config, the weights unchanged.

transformers reads RoPE scaling from the model config: `rope_parameters` (transformers 5: rope_type, rope_theta,
factor, original_max_position_embeddings, ...) or `rope_scaling` + `rope_theta` (4.x). Setting them and
`max_position_embeddings` is all a context extension changes before training; a model saved afterwards carries
them in config.json, so `AutoModelForCausalLM.from_pretrained` builds its rotary embedding with the new window.
"""

from __future__ import annotations

from typing import Any

from dapt.config import ContextConfig
from dapt.errors import ConfigError

# transformers' defaults for the extra fields some rope types need (Llama 3.1's published values for llama3)
EXTRA_FIELDS = {"llama3": {"low_freq_factor": 1.0, "high_freq_factor": 4.0}}


def rope_settings(config: Any) -> dict[str, Any]:
    """The model config's RoPE parameters as one dict (rope_type, rope_theta, ...), in either transformers layout."""
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict):
        return dict(parameters)
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    return {"rope_type": scaling.pop("rope_type", scaling.pop("type", "default")), **scaling} | (
        {"rope_theta": config.rope_theta} if getattr(config, "rope_theta", None) is not None else {}
    )


def extend_context(config: Any, context: ContextConfig) -> dict[str, Any]:
    """Set `context`'s window and RoPE scaling on a transformers model config (in place); return what changed:
    {"old_window", "new_window", "rope_before", "rope_after"} for the manifest."""
    settings = rope_settings(config)
    if "rope_theta" not in settings:
        raise ConfigError(
            f"pretrain.context: this model ({getattr(config, 'model_type', '?')}) has no rotary position embedding "
            "(RoPE) in its config; context extension by RoPE scaling needs a RoPE model (Llama, Mistral, Qwen, "
            "SmolLM, ...)"
        )
    old_window = int(settings.get("original_max_position_embeddings") or config.max_position_embeddings)
    if context.length <= old_window:
        raise ConfigError(
            f"pretrain.context.length: {context.length} tokens is not longer than the base's window ({old_window}); "
            "set a longer length, or remove pretrain.context"
        )
    after = dict(settings)
    if context.rope_theta is not None:
        after["rope_theta"] = float(context.rope_theta)
    if context.rope_scaling is not None:
        after |= {
            "rope_type": context.rope_scaling,
            "factor": float(context.factor or context.length / old_window),
            "original_max_position_embeddings": old_window,
            **EXTRA_FIELDS.get(context.rope_scaling, {}),
        }
    if isinstance(getattr(config, "rope_parameters", None), dict):
        config.rope_parameters = after
    else:  # transformers 4.x
        config.rope_theta = after.pop("rope_theta")
        config.rope_scaling = after if after.get("rope_type", "default") != "default" else None
    config.max_position_embeddings = context.length
    return {
        "old_window": old_window,
        "new_window": context.length,
        "rope_before": settings,
        "rope_after": rope_settings(config),
    }
