"""The pipeline's first task: the run check (pipelines/run_check.py) on the parameters the run was started
with, in the small teacher image, before any stage starts."""

from kfp import dsl

from components.common.images import image_for


# Its inputs are the pipeline's parameters, one by one (tests/test_run_check.py holds the two lists
# equal); a single mapping of them would reach kfp.local's runner as JSON text it cannot quote.
@dsl.component(base_image=image_for("teacher"), install_kfp_package=False)
def check_run(
    store_uri: str,
    student_source: str,
    student_trust_remote_code: bool,
    teacher_dataset: str,
    teacher_dataset_format: str,
    teacher_provider: str,
    teacher_model: str,
    teacher_base_url: str,
    teacher_api_key_env: str,
    teacher_concurrency: int,
    teacher_mode: str,
    teacher_max_tokens: int,
    teacher_temperature: float,
    teacher_test_ratio: float,
    teacher_system_prompt: str,
    teacher_shards: int,
    teacher_gpus: int,
    teacher_node_selector: dict,
    teacher_tolerations: list,
    teacher_overrides: dict,
    train_method: str,
    train_lora_r: int,
    train_lora_alpha: int,
    train_learning_rate: float,
    train_max_steps: int,
    train_batch_size: int,
    train_kd: str,
    train_kd_teacher_source: str,
    train_gpus: int,
    train_nodes: int,
    train_job_gpus_per_node: int,
    train_job_cpu: str,
    train_job_memory: str,
    train_engine: str,
    train_runtime: str,
    train_queue_name: str,
    train_priority_class: str,
    train_cpu: str,
    train_memory: str,
    train_node_selector: dict,
    train_tolerations: list,
    train_overrides: dict,
    merge_max_shard_size: str,
    merge_dtype: str,
    eval_max_new_tokens: int,
    eval_batch_size: int,
    eval_max_samples: int,
    eval_gate_metric: str,
    eval_min_score: float,
    eval_gpus: int,
    eval_node_selector: dict,
    eval_tolerations: list,
    eval_benchmark_tasks: list,
    eval_benchmark_limit: int,
    eval_max_regression: dict,
    eval_overrides: dict,
    register_registry_url: str,
    register_model_name: str,
    register_deploy: bool,
    register_namespace: str,
    register_gpus: int,
    register_overrides: dict,
    seed: int,
):
    """Check the run's parameters with every stage's Config before any stage starts."""
    parameters = dict(locals())
    from components.common.entry import one_line_errors
    from pipelines.run_check import check_run_inputs

    with one_line_errors():
        check_run_inputs(parameters)
