"""KFP component of the teacher-data stage; the logic lives in components.teacher."""

from kfp import dsl

from components.common.images import image_for


@dsl.component(base_image=image_for("teacher"), install_kfp_package=False)
def teacher_data(
    dataset: str,
    store_uri: str,
    run_id: str,
    provider: str,
    model: str,
    data: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
    base_url: str = "",
    api_key_env: str = "TEACHER_API_KEY",
    dataset_format: str = "auto",
    concurrency: int = 16,
    mode: str = "sync",
    max_tokens: int = 1024,
    temperature: float = 0.0,
    test_ratio: float = 0.1,
    seed: int = 0,
    system_prompt: str = "",
    shard_index: int = -1,
    num_shards: int = 1,
    overrides: dict = {},
):
    """Ask the teacher for an answer to every prompt of `dataset`; write train/test distillation records.

    The parameters are the fields of components.teacher.Config of the same name (provider, model,
    base_url, api_key_env, max_tokens and temperature are its `provider` fields; "" for None).

    Args:
        store_uri: artifact store for resumable result shards and the cross-run answer cache.
        run_id: run-scoped prefix in the store; a retried task resumes from it.
        shard_index: with num_shards > 1, ask only for this shard's prompts (the `data` output stays
            empty); -1 asks for whatever no shard stored yet, then merges, filters and splits everything.
        overrides: any other field of components.teacher.Config, nested as in its YAML form.
    """
    import functools

    from components.common.entry import run_stage
    from components.teacher import Config
    from components.teacher.stage import run, run_shard

    fields = dict(
        dataset=dataset,
        dataset_format=dataset_format,
        output_dir=data.path,
        store_uri=store_uri,
        run_id=run_id,
        provider=dict(
            name=provider,
            base_url=base_url or None,
            model=model,
            api_key_env=api_key_env,
            max_tokens=max_tokens,
            temperature=temperature,
        ),
        concurrency=concurrency,
        mode=mode,
        test_ratio=test_ratio,
        seed=seed,
        system_prompt=system_prompt or None,
    )
    if shard_index >= 0:
        stage = functools.partial(run_shard, shard_index=shard_index, num_shards=num_shards)
    else:
        stage = run
    result = run_stage(stage, Config, fields, overrides, parameters="teacher")
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)


@dsl.component(base_image=image_for("teacher"), install_kfp_package=False)
def teacher_shard_indices(num_shards: int) -> list:
    """The shard indices 0 … num_shards-1, for dsl.ParallelFor."""
    return list(range(num_shards))
