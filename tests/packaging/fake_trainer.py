"""Stands in for `python -m components.train` inside the multi-node test's PyTorchJob pods, so that the
test checks the job plumbing (inputs, rendezvous across pods, outputs) and not the trainer itself.

Every process joins the gloo process group torchrun set up and all-reduces its rank; rank 0 writes a
train_summary.json recording the world size, the base model it read and the names of the credentials
in its environment, plus a TensorBoard-like file.

With save_steps and a store, it checkpoints as the trainer does: it starts after the newest complete
checkpoint under runs/<run_id>/train/checkpoints (the real CheckpointStore), saves the next step, and
reports where it resumed from. FAKE_TRAINER_KILL_NODE=<node rank> kills that node (SIGKILL) right
after a first attempt's checkpoint, as a lost node would. With kd.teacher_dir it reads the teacher too.
"""

import argparse
import json
import os
import signal
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from components.common.store import open_store
from components.train.checkpoint import CheckpointStore

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
fields = yaml.safe_load(Path(parser.parse_args().config).read_text())

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([rank])
dist.all_reduce(total)
print(f"rank {rank} of {world}: data has {len(list(Path(fields['data_dir']).iterdir()))} file(s)", flush=True)
resumed_from = None
if fields.get("save_steps") and fields.get("store_uri"):
    run_store = open_store(fields["store_uri"]).child(f"runs/{fields['run_id']}/train")
    checkpoints = CheckpointStore(run_store.child("checkpoints"), keep=2)
    resumed_from = checkpoints.latest() or 0
    dist.barrier()  # every rank has read the newest checkpoint before rank 0 writes the next one
    if rank == 0:
        with tempfile.TemporaryDirectory() as state:
            (Path(state) / "trainer.json").write_text(json.dumps({"step": resumed_from + 1}))
            checkpoints.save(resumed_from + 1, Path(state))
        print(f"saved checkpoint step {resumed_from + 1} (resumed from {resumed_from})", flush=True)
    dist.barrier()
    if resumed_from == 0 and os.environ.get("FAKE_TRAINER_KILL_NODE") == os.environ["GROUP_RANK"]:
        print(f"node {os.environ['GROUP_RANK']} is lost", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()  # the other nodes notice the lost one here
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
    if resumed_from is not None:
        summary["resumed_from"] = resumed_from
    teacher_dir = fields.get("kd", {}).get("teacher_dir")
    if teacher_dir:
        summary["teacher"] = json.loads((Path(teacher_dir) / "config.json").read_text())["model_type"]
    (output / "train_summary.json").write_text(json.dumps(summary))
    (tensorboard / "events.out.tfevents.fake").write_text("scalars")
dist.destroy_process_group()
