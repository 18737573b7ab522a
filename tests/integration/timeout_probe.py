"""Under torchrun with DAPT_COLLECTIVE_TIMEOUT=2: `timeout_probe.py slow-main` keeps the second process waiting 6 s
for the main one (as during a stage on the main process alone) and must succeed; `timeout_probe.py hung-rank-1`
trains a tiny model whose second process hangs at step 2, and the first must stop on the collective timeout."""

import sys
import time

import torch

from dapt.train.distributed import join, leave, wait_for_everyone
from dapt.train.loop import LoopSettings, train_loop


def main(mode: str) -> None:
    join()
    rank = torch.distributed.get_rank()
    if mode == "slow-main":
        if rank == 0:
            time.sleep(6)
        wait_for_everyone()
        print(f"rank {rank}: waited", flush=True)
        leave()
        return
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, calls = torch.randn(8, 4), {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == 2 and rank == 1:
            time.sleep(120)  # hung: a dead GPU, a stuck filesystem
        return model(batch).square().mean(), len(batch)

    train_loop(model, lambda: x, loss_fn, LoopSettings(max_steps=4, lr=0.01), description="probe")


if __name__ == "__main__":
    main(sys.argv[1])
