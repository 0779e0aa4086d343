"""KFP component of the merge stage; the logic lives in components.merge."""

from kfp import dsl

from components.common.images import image_for


@dsl.component(base_image=image_for("merge"), install_kfp_package=False)
def merge_adapter(
    base: dsl.Input[dsl.Model],
    trained: dsl.Input[dsl.Model],
    data: dsl.Input[dsl.Dataset],
    merged: dsl.Output[dsl.Model],
    max_shard_size: str = "2GB",
    dtype: str = "auto",
    overrides: dict = {},
):
    """Merge the LoRA adapter into the base weights (or re-shard a full model) and verify the result.

    The parameters are the fields of components.merge.Config of the same name; `data` (the teacher
    dataset) names the teacher in the model card; `overrides` sets any other field, nested as in its
    YAML form.
    """
    from components.common.entry import run_stage
    from components.merge import Config
    from components.merge.stage import run

    fields = dict(
        student_dir=base.path,
        trained_dir=trained.path,
        output_dir=merged.path,
        data_dir=data.path,
        max_shard_size=max_shard_size,
        dtype=dtype,
    )
    result = run_stage(run, Config, fields, overrides, parameters="merge")
    merged.metadata.update({"format": "hf_model", "max_logit_diff": result.max_logit_diff})
