"""Multi-node training: the train stage as a Kubeflow Training Operator PyTorchJob (N nodes x M GPUs).

Single-pod training stays the default; the train component calls `run_multinode_training` when the
pipeline asks for more than one node. Two halves live here:

- in the KFP train pod, `run_multinode_training` creates the PyTorchJob through the Kubernetes API
  (in-cluster service account, RBAC in manifests/base/rbac.yaml), streams every pod's log, waits for the
  job to end, deletes it, then copies the trained output from the store into the task's output folders;
- in each PyTorchJob pod, `python -m components.train.multinode` (`worker_main`) downloads the inputs
  from the store, starts `torchrun` for this node (rank and rendezvous from the operator's environment)
  and, on node 0, uploads the output folders to the store.

Inputs and outputs travel through the artifact store (s3://...), because the KFP pod's local artifact
folders are not visible from the job's pods:

    inputs:  student_dir <- KFP artifact URI of the student, data_dir <- URI of the teacher dataset
    outputs: output_dir, tensorboard_dir -> <store_uri>/runs/<run_id>/train/multinode/<field>

job.py holds the PyTorchJob itself (spec, create, watch, logs, delete); training.py both halves above.
"""

from components.train.multinode.job import PyTorchJobSpec, build_pytorchjob, job_name_for, run_pytorchjob
from components.train.multinode.training import run_multinode_training, worker_command, worker_main

__all__ = [
    "PyTorchJobSpec",
    "build_pytorchjob",
    "job_name_for",
    "run_multinode_training",
    "run_pytorchjob",
    "worker_command",
    "worker_main",
]
