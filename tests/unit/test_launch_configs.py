"""The shipped accelerate launch configs load with accelerate's own reader and leave precision to dapt.

(zero2-gpu.yaml, adapted to two CPU processes, also launches a test in test_distributed.)"""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

import dapt

LAUNCH = Path(dapt.__file__).parent / "launch"
# The configs the docs tell users to launch with; a new one is added here (and to docs/distributed.md).
SHIPPED = ["ddp-gpu.yaml", "zero2-gpu.yaml"]


def test_the_package_ships_exactly_the_documented_launch_configs():
    assert sorted(path.name for path in LAUNCH.glob("*.yaml")) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_launch_config_loads(name):
    config = load_config_from_file(str(LAUNCH / name))
    if name.startswith("zero"):  # DeepSpeed ZeRO, a stage dapt's loop trains with
        assert config.distributed_type.value == "DEEPSPEED"
        assert config.deepspeed_config["zero_stage"] == int(name[4])
    else:
        assert config.distributed_type.value == "MULTI_GPU"
    assert config.mixed_precision == "no", "precision comes from pretrain.precision"
