"""Under torchrun, 2 processes: `sharded_load_probe.py FOLDER EMPTY_FOLDER OUT_JSON [untied]` shards a model that
the main process loads from FOLDER and the other builds from EMPTY_FOLDER, a copy without the weight file; the
main process writes to OUT_JSON how far the gathered weights are from the file's. With `untied`, the other
process unties its LM head first (a model unlike the main one's)."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from dapt.model.load import load_causal_lm
from dapt.train.distributed import join, leave
from dapt.train.sharding import full_model_state, shard_model


def main(folder: Path, empty: Path, out: Path, untied: bool) -> None:
    join()
    main_process = torch.distributed.get_rank() == 0
    model, _ = load_causal_lm(folder if main_process else empty, weights=main_process)
    if untied and not main_process:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    shard_model(model, torch.device("cpu"), 2, bf16=False)
    gathered = full_model_state(model)
    if main_process:
        saved = load_file(folder / "model.safetensors")
        difference = max((gathered[name] - tensor).abs().max().item() for name, tensor in saved.items())
        out.write_text(json.dumps({"difference": difference, "names": sorted(saved)}))
    leave()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), "untied" in sys.argv[4:])
