"""KFP component of the eval stage; the logic lives in components.evaluate."""

from kfp import dsl

from components.common.images import image_for


@dsl.component(base_image=image_for("eval"), install_kfp_package=False)
def evaluate_student(
    untrained: dsl.Input[dsl.Model],
    distilled: dsl.Input[dsl.Model],
    data: dsl.Input[dsl.Dataset],
    tensorboard: dsl.Input[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
    results: dsl.Output[dsl.Artifact],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    max_samples: int = 200,
    gate_metric: str = "distilled_rouge_l",
    min_score: float = 0.0,
    benchmark_tasks: list = [],
    benchmark_limit: int = 100,
    max_regression: dict = {},
    overrides: dict = {},
) -> str:
    """Compare the untrained and the distilled student with the teacher on the held-out split; returns the
    distilled model's URI, for the hand-off of a model that passed the gates.

    The parameters are the fields of components.evaluate.Config of the same name (0 for None), the
    benchmark ones those of its `benchmarks` section; `overrides` sets any other field, nested as in its
    YAML form.
    """
    import shutil

    from components.common.entry import run_stage
    from components.evaluate import Config
    from components.evaluate.stage import run

    fields = dict(
        student_dir=untrained.path,
        trained_dir=distilled.path,
        data_dir=data.path,
        tensorboard_dir=tensorboard.path,
        output_dir=results.path,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_samples=max_samples or None,
        gate_metric=gate_metric,
        min_score=min_score or None,
        benchmarks=dict(tasks=benchmark_tasks, limit=benchmark_limit or None, max_regression=max_regression),
    )
    result = run_stage(run, Config, fields, overrides, parameters="eval")
    shutil.copyfile(f"{results.path}/report.html", report.path)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    return distilled.uri
