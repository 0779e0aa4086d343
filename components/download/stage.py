"""The download stage: fetch a model into the output folder, through a cache in the artifact store
(components/common/model_download.py, which the train task shares for its KD teacher).

    python -m components.download --config download.yaml
"""

from __future__ import annotations

from components.common.model_download import Result, fetch_model
from components.download.config import Config


def run(config: Config) -> Result:
    return fetch_model(
        config.source,
        config.output_dir,
        config.store_uri,
        revision=config.revision,
        hf_token_env=config.hf_token_env,
        use_cache=config.use_cache,
        trust_remote_code=config.trust_remote_code,
    )
