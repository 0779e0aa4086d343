"""Multi-node training: the train stage as a Kubeflow training job (N nodes x M GPUs), a Trainer v2
TrainJob or, on Kubeflow 1.10 clusters, a Training Operator PyTorchJob.

Single-pod training stays the default; the train component calls `run_as_job` when the pipeline asks
for more than one node or names an engine. Two halves live here:

- in the KFP train pod, `run_multinode_training` picks the engine (engine.py: TrainJob when the cluster
  serves it, else PyTorchJob), creates the job through the Kubernetes API (the train task's own token,
  RBAC in manifests/base/rbac.yaml), streams the logs, waits for the job to end, deletes it, then
  copies the trained output from the store into the task's output folders;
- in each job pod, `python -m components.train.multinode` (`worker_main`) downloads the inputs from the
  store, starts `torchrun` for this node (rank and rendezvous from the engine's environment) and, on
  node 0, uploads the output folders to the store.

Inputs and outputs travel through the artifact store (s3://...), because the KFP pod's local artifact
folders are not visible from the job's pods:

    inputs:  student_dir <- KFP artifact URI of the student, data_dir <- URI of the teacher dataset,
             kd.teacher_dir <- the download stage's cache of the KD teacher in the store
    outputs: output_dir, tensorboard_dir -> <store_uri>/runs/<run_id>/train/multinode/<field>

trainjob.py holds the TrainJob, job.py the PyTorchJob (spec, create, watch, logs, delete), kube.py what
both share, training.py both halves above.
"""

from components.train.multinode.engine import choose_engine
from components.train.multinode.job import PyTorchJobSpec, build_pytorchjob, run_pytorchjob
from components.train.multinode.kube import job_name_for
from components.train.multinode.training import (
    run_as_job,
    run_multinode_training,
    worker_command,
    worker_main,
)
from components.train.multinode.trainjob import TrainJobSpec, build_trainjob, run_trainjob

__all__ = [
    "PyTorchJobSpec",
    "TrainJobSpec",
    "build_pytorchjob",
    "build_trainjob",
    "choose_engine",
    "job_name_for",
    "run_as_job",
    "run_multinode_training",
    "run_pytorchjob",
    "run_trainjob",
    "worker_command",
    "worker_main",
]
