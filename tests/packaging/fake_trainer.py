"""Stands in for `python -m components.train` inside the multi-node test's PyTorchJob pods, so that the
test checks the job plumbing (inputs, rendezvous across pods, outputs) and not the trainer itself.

Every process joins the gloo process group torchrun set up and all-reduces its rank; rank 0 writes a
train_summary.json recording the world size, the base model it read and the names of the credentials
in its environment, plus a TensorBoard-like file.
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
fields = yaml.safe_load(Path(parser.parse_args().config).read_text())

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([rank])
dist.all_reduce(total)
print(f"rank {rank} of {world}: data has {len(list(Path(fields['data_dir']).iterdir()))} file(s)", flush=True)
if rank == 0:
    base = json.loads((Path(fields["student_dir"]) / "config.json").read_text())
    output, tensorboard = Path(fields["output_dir"]), Path(fields["tensorboard_dir"])
    output.mkdir(parents=True, exist_ok=True)
    tensorboard.mkdir(parents=True, exist_ok=True)
    summary = {
        "method": fields["method"],
        "base_model": base["model_type"],
        "steps": fields["max_steps"],
        "final_loss": 0.5,
        "world_size": world,
        "rank_sum": int(total.item()),
        "nodes": int(os.environ["GROUP_WORLD_SIZE"]),
        "credentials": sorted(
            name for name in os.environ if any(w in name for w in ("KEY", "TOKEN", "SECRET"))
        ),
    }
    (output / "train_summary.json").write_text(json.dumps(summary))
    (tensorboard / "events.out.tfevents.fake").write_text("scalars")
dist.destroy_process_group()
