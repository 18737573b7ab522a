"""A resumable stream of training batches for the training loop's tests."""

import os
import signal

import torch


class Stream:
    """Batches 0, 1, 2, ... (of `rows` × `features`) of a fixed regression problem; signals this process when batch
    `signal_at` is drawn (the preemption tests); also the fp16 tests' data."""

    def __init__(self, signal_at: int | None = None, signum: int = signal.SIGTERM, rows: int = 8, features: int = 4):
        self.position, self.signal_at, self.signum = 0, signal_at, signum
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, rows, features, generator=generator)
        self.y = self.x @ torch.randn(features, 1, generator=generator)

    def __call__(self):
        if self.position == self.signal_at:
            os.kill(os.getpid(), self.signum)
        batch = self.x[self.position % 40], self.y[self.position % 40]
        self.position += 1
        return batch

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]
