"""The shipped accelerate launch configs load with accelerate's own reader and leave precision to dapt.

(zero2-gpu.yaml, adapted to two CPU processes, also launches a test in test_distributed.)"""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

import dapt

CONFIGS = sorted((Path(dapt.__file__).parent / "launch").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_launch_config_loads(path):
    assert CONFIGS, "the launch configs ship inside the package"
    config = load_config_from_file(str(path))
    if path.name.startswith("zero"):  # DeepSpeed ZeRO, a stage dapt's loop trains with
        assert config.distributed_type.value == "DEEPSPEED"
        assert config.deepspeed_config["zero_stage"] == int(path.name[4])
    else:
        assert config.distributed_type.value == "MULTI_GPU"
    assert config.mixed_precision == "no", "precision comes from pretrain.precision"
