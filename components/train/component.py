"""KFP component of the train stage; the logic lives in components.train."""

from kfp import dsl

from components.common.images import image_for


@dsl.component(base_image=image_for("train"), install_kfp_package=False)
def train_student(
    student: dsl.Input[dsl.Model],
    data: dsl.Input[dsl.Dataset],
    store_uri: str,
    run_id: str,
    trained: dsl.Output[dsl.Model],
    tensorboard: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    method: str = "lora",
    lora_r: int = 16,
    lora_alpha: int = 32,
    learning_rate: float = 2e-4,
    max_steps: int = -1,
    batch_size: int = 8,
    seed: int = 0,
    kd: str = "none",
    kd_teacher_source: str = "",
    nodes: int = 1,
    gpus_per_node: int = 1,
    engine: str = "auto",
    runtime: str = "distill-torch",
    queue_name: str = "",
    priority_class: str = "",
    job_cpu: str = "32",
    job_memory: str = "256Gi",
    node_selector: dict = {},
    tolerations: list = [],
    job_env: dict = {},
    overrides: dict = {},
):
    """Distill the teacher's records into the student: SFT (and KD when configured) with LoRA, QLoRA or full FT.

    The parameters are the fields of components.train.Config of the same name (lora_r and lora_alpha
    are lora.r and lora.alpha, kd is kd.kind; engine, runtime, queue_name and priority_class are
    cluster.*).

    Args:
        store_uri: artifact store for checkpoints and live TensorBoard logs under runs/<run_id>/train.
        run_id: run-scoped prefix in the store; a retried task resumes from its newest checkpoint.
        kd_teacher_source: the local teacher for kd=logits, any download source (hf://, s3://, a path);
            fetched through the download stage and its cache in the store.
        nodes: with more than one (or an engine named), this task only runs a training job of `nodes` x
            `gpus_per_node` GPUs: a Kubeflow Trainer v2 TrainJob or a Training Operator PyTorchJob
            (`engine`), whose pods get the Secrets and ConfigMaps named in `job_env`, this pod's image and
            image pull secrets, `job_cpu` and `job_memory` each, and `node_selector` and `tolerations`.
        overrides: any other field of components.train.Config, nested as in its YAML form.
    """
    import functools
    import tempfile

    from components.common.entry import one_line_errors, run_stage
    from components.common.model_download import fetch_model
    from components.train import Config
    from components.train.stage import run

    kd_fields = {"kind": kd}
    if kd_teacher_source:
        kd_fields["teacher_dir"] = tempfile.mkdtemp(prefix="kd-teacher-")
        with one_line_errors():
            fetch_model(kd_teacher_source, kd_fields["teacher_dir"], store_uri)
    fields = dict(
        student_dir=student.path,
        data_dir=data.path,
        output_dir=trained.path,
        tensorboard_dir=tensorboard.path,
        store_uri=store_uri,
        run_id=run_id,
        method=method,
        lora=dict(r=lora_r, alpha=lora_alpha),
        learning_rate=learning_rate,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        kd=kd_fields,
        cluster=dict(engine=engine, runtime=runtime, queue_name=queue_name, priority_class=priority_class),
    )
    if nodes > 1 or engine != "auto":
        from components.train.multinode.training import run_as_job

        stage = functools.partial(
            run_as_job,
            model_uri=student.uri,
            data_uri=data.uri,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            job_env=job_env,
            kd_teacher_source=kd_teacher_source,
            cpu=job_cpu,
            memory=job_memory,
            node_selector=node_selector,
            tolerations=tolerations,
        )
    else:
        stage = run
    result = run_stage(stage, Config, fields, overrides, parameters="train")
    trained.metadata.update({"format": "peft_adapter" if method != "full" else "hf_model", "method": method})
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
