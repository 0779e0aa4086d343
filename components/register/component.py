"""KFP component of the register stage; the logic lives in components.register. It runs in the eval image."""

from kfp import dsl

from components.common.images import image_for


@dsl.component(base_image=image_for("register"), install_kfp_package=False)
def register_model(
    model_uri: str,
    results: dsl.Input[dsl.Artifact],
    run_id: str,
    run_name: str,
    inference_service: dsl.Output[dsl.Artifact],
    registry_url: str = "",
    model_name: str = "distilled-student",
    deploy: bool = False,
    namespace: str = "",
    gpus: int = 1,
    overrides: dict = {},
):
    """Hand the gated model over: its KServe InferenceService (always written), Model Registry (with
    registry_url) and the cluster (with deploy).

    The parameters are the fields of components.register.Config of the same name ("" for None), namespace
    and gpus those of its `serving` section; `overrides` sets any other field, nested as in its YAML form.
    """
    from components.common.entry import run_stage
    from components.register import Config
    from components.register.stage import run

    fields = dict(
        model_uri=model_uri,
        eval_dir=results.path,
        output_dir=inference_service.path,
        run_id=run_id,
        run_name=run_name,
        registry_url=registry_url or None,
        model_name=model_name,
        deploy=deploy,
        serving=dict(namespace=namespace or None, gpus=gpus),
    )
    result = run_stage(run, Config, fields, overrides, parameters="register")
    inference_service.metadata["registered"] = result.registration is not None
    inference_service.metadata["deployed"] = result.deployed or ""
