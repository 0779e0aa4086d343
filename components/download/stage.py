"""The download stage: fetch a model into the output folder, through a cache in the artifact store
(components/common/model_download.py, which the train task shares for its KD teacher).

    python -m components.download --config download.yaml
"""

from __future__ import annotations

from pathlib import Path

from components.common.model_download import Result, fetch_model
from components.download.config import Config
from components.download.prune import keep_every_nth_layer


def run(config: Config) -> Result:
    result = fetch_model(
        config.source,
        config.output_dir,
        config.store_uri,
        revision=config.revision,
        hf_token_env=config.hf_token_env,
        use_cache=config.use_cache,
        trust_remote_code=config.trust_remote_code,
    )
    if config.keep_every > 1:
        kept = keep_every_nth_layer(Path(config.output_dir), config.keep_every, config.trust_remote_code)
        result.metadata = {**result.metadata, "kept_layers": kept}
    return result
