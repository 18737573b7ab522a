"""Loading a checkpoint that does not fit the model, or whose files are damaged, is an error for people: it names
the folder or file, a few of the weights that differ, and how to go on (no traceback from the CLI, exit code 2)."""

import pytest
import torch
import transformers

from dapt.config import BaseConfig, LoraConfig, PresetConfig
from dapt.errors import CheckpointError, DaptError, TrainingError
from dapt.model.load import load_original_base
from dapt.model.lora import add_lora, load_adapter_weights
from dapt.train.checkpoint import Checkpointer, load_full_weights


def tiny(**preset) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_original_base(BaseConfig(preset=PresetConfig(**preset)))[0]


def training_of_tiny(tmp_path):
    """A tiny model, its optimizer and schedule, and a Checkpointer of full checkpoints in tmp_path."""
    model = tiny()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpointer = Checkpointer(
        tmp_path / "checkpoints",
        save_model=lambda folder, _: model.save_pretrained(folder, safe_serialization=True),
        load_weights=lambda folder: load_full_weights(model, folder),
    )
    return model, optimizer, scheduler, checkpointer


def saved_checkpoint(tmp_path, model) -> "Path":  # noqa: F821
    folder = tmp_path / "checkpoints" / "step-000004"
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def test_a_checkpoint_of_the_same_model_loads_with_its_tied_head(tmp_path):
    trained = tiny()
    with torch.no_grad():
        trained.model.embed_tokens.weight.add_(1.0)
    folder = saved_checkpoint(tmp_path, trained)
    fresh = tiny()
    load_full_weights(fresh, folder)
    torch.testing.assert_close(fresh.lm_head.weight, trained.lm_head.weight)


def test_a_checkpoint_of_a_deeper_model_names_the_extra_layers_and_the_fix(tmp_path):
    folder = saved_checkpoint(tmp_path, tiny(num_layers=3))
    with pytest.raises(CheckpointError) as raised:
        load_full_weights(tiny(num_layers=2), folder)
    message = str(raised.value)
    assert isinstance(raised.value, TrainingError) and raised.value.exit_code == 2
    assert str(folder) in message
    assert "9 unexpected (model.layers.2." in message and "and 6 more" in message, "a few names, not all"
    assert "point `base:`" in message and f"delete {folder.parent} to start this stage over" in message


def test_a_checkpoint_of_another_width_names_the_shapes(tmp_path):
    folder = saved_checkpoint(tmp_path, tiny(intermediate_size=128))
    shapes = r"6 of another shape \(model.layers.0.mlp.down_proj.weight 64×128 saved vs 64×176 here, "
    with pytest.raises(CheckpointError, match=shapes):
        load_full_weights(tiny(), folder)


def test_a_checkpoint_of_a_shallower_model_names_what_is_missing(tmp_path):
    folder = saved_checkpoint(tmp_path, tiny(num_layers=1))
    with pytest.raises(CheckpointError, match=r"9 missing \(model.layers.1."):
        load_full_weights(tiny(num_layers=2), folder)


@pytest.mark.parametrize("damage", ["truncated", "deleted", "empty"])
def test_a_damaged_or_missing_weights_file_is_named(tmp_path, damage):
    folder = saved_checkpoint(tmp_path, tiny())
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "deleted":
        weights.unlink()
    else:
        weights.write_bytes(b"")
    with pytest.raises(CheckpointError) as raised:
        load_full_weights(tiny(), folder)
    assert str(weights) in str(raised.value) and "missing, truncated or damaged" in str(raised.value)
    assert f"Delete {folder.parent}" in str(raised.value)


def test_a_truncated_training_state_is_named(tmp_path):
    model, optimizer, scheduler, checkpointer = training_of_tiny(tmp_path)
    folder = checkpointer.save(4, optimizer.state_dict(), scheduler, {"step": 4}, best_step=None)
    state = folder / "training_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    for reads_optimizer_state in (True, False):  # the main process reads it whole, the others memory-map it
        with pytest.raises(CheckpointError, match="training_state.pt: cannot load this checkpoint file"):
            checkpointer.restore(
                folder, lambda state, _: optimizer.load_state_dict(state), scheduler, reads_optimizer_state
            )


def lora(r: int = 4, **preset):
    return add_lora(tiny(**preset), LoraConfig(r=r, alpha=8))


@pytest.mark.parametrize(
    ("trained", "expected"),
    [
        (lambda: lora(r=8), r"of another shape \(base_model.model.model.layers.0.self_attn.q_proj.lora_A"),
        (lambda: lora(num_layers=3), r"unexpected \(base_model.model.model.layers.2."),
        (lambda: lora(num_layers=1), r"missing \(base_model.model.model.layers.1."),
    ],
    ids=["another-rank", "deeper", "shallower"],
)
def test_adapters_of_another_setting_are_named(tmp_path, trained, expected):
    folder = tmp_path / "checkpoints" / "step-000002"
    trained().save_pretrained(folder)
    with pytest.raises(CheckpointError, match=expected) as raised:
        load_adapter_weights(lora(), folder)
    assert str(folder) in str(raised.value) and "pretrain.lora" in str(raised.value)


def test_a_missing_adapter_file_is_named(tmp_path):
    with pytest.raises(DaptError, match="adapter_model.safetensors: cannot load"):
        load_adapter_weights(lora(), tmp_path / "checkpoints" / "step-000002")


def _small_checkpointer(folder):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def save_model(path, weights):
        path.mkdir(parents=True)
        (path / "weights.txt").write_text(str(model.weight.tolist()))

    checkpointer = Checkpointer(folder, save_model, lambda path: None)
    return checkpointer, lambda step, state: checkpointer.save(step, optimizer.state_dict(), scheduler, state, None)


def test_re_saving_a_step_replaces_it_and_a_swap_cut_short_is_recovered(tmp_path):
    checkpointer, save = _small_checkpointer(tmp_path)
    save(4, {"version": 1})
    save(4, {"version": 2})  # the end of training right after a checkpoint of the same step
    assert (checkpointer.latest_resumable() / "loop_state.json").read_text().count('"version": 2') == 1
    assert [p.name for p in tmp_path.iterdir()] == ["step-000004"], "no temporary folder left"

    # killed between the two renames of a re-save: the old folder has been set aside, the new one not yet named
    (tmp_path / "step-000004").rename(tmp_path / ".step-000004.replaced")
    assert checkpointer.latest_resumable() == tmp_path / "step-000004", "the set-aside checkpoint is put back"


FAMILIES = {  # transformers renames (GPT-NeoX) or splits (the MoE experts) some weights when it saves these
    "llama": (transformers.LlamaConfig, {}),
    "gpt_neox": (transformers.GPTNeoXConfig, {}),
    "mixtral": (transformers.MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": (
        transformers.Qwen2MoeConfig,
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
        | {"shared_expert_intermediate_size": 32},
    ),
    "gpt2": (transformers.GPT2Config, {"n_embd": 32, "n_layer": 2, "n_head": 4}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_checkpoint_resumes_into_the_same_architecture_whatever_transformers_renames(tmp_path, family):
    config_class, options = FAMILIES[family]
    config = config_class(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **options
    )
    torch.manual_seed(0)
    trained = transformers.AutoModelForCausalLM.from_config(config)
    trained.save_pretrained(tmp_path / "step-000004")
    torch.manual_seed(1)
    fresh = transformers.AutoModelForCausalLM.from_config(config)
    load_full_weights(fresh, tmp_path / "step-000004")
    for name, tensor in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_fp16s_loss_scale_resumes_with_the_checkpoint(tmp_path):
    # a scale that restarted at 65536 would skip steps the uninterrupted run did not
    model, optimizer, scheduler, checkpointer = training_of_tiny(tmp_path)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 512.0, "_growth_tracker": 7})
    folder = checkpointer.save(4, optimizer.state_dict(), scheduler, {"step": 4}, None, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    checkpointer.restore(folder, lambda state, _: optimizer.load_state_dict(state), scheduler, scaler=fresh)
    assert fresh.state_dict()["scale"] == 512.0 and fresh.state_dict()["_growth_tracker"] == 7
