"""KFP component of the download stage; the logic lives in components.download."""

from kfp import dsl

from components.common.images import image_for


@dsl.component(base_image=image_for("download"), install_kfp_package=False)
def download_model(
    source: str,
    store_uri: str,
    model: dsl.Output[dsl.Model],
    revision: str = "",
    hf_token_env: str = "HF_TOKEN",
):
    """Fetch a model into the `model` artifact, reusing the store's cached copy of the same source.

    Args:
        source: hf://org/name[@rev], modelscope://org/name, s3://bucket/prefix, a path, or tiny://qwen2.
        store_uri: artifact store (s3://bucket/prefix or a folder) that holds the download cache.
        revision: branch, tag or commit for hub sources.
        hf_token_env: environment variable with a Hugging Face token for gated models.
    """
    from components.common.entry import run_stage
    from components.download import Config
    from components.download.stage import run

    fields = dict(source=source, output_dir=model.path, store_uri=store_uri, hf_token_env=hf_token_env)
    result = run_stage(run, Config, {**fields, "revision": revision or None})
    model.metadata.update({"source": source, "cached": result.cached, "format": "hf_model"})
    if "revision" in result.metadata:  # the commit a hub download was pinned to
        model.metadata["revision"] = result.metadata["revision"]
