"""dapt: domain-adaptive pretraining, the pretrain-then-adapt way."""

__version__ = "0.1.0"
