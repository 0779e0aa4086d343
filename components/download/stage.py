"""The download stage: fetch a model into the output folder, through a cache in the artifact store.

    python -m components.download --config download.yaml

A cached copy lives under `cache/download/<hash of source and revision>/` in the store and counts only
once its `_COMPLETE` marker exists, which is written last: a pod killed mid-upload leaves no half model
that a later run would trust.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from components.common.errors import InputError
from components.common.records import stable_hash
from components.common.store import ArtifactStore, open_store
from components.download.config import Config
from components.download.sources import Source, fetch, parse_source

log = logging.getLogger(__name__)
COMPLETE_MARKER = "_COMPLETE"


@dataclass
class Result:
    output_dir: str
    source: str
    cached: bool
    metadata: dict[str, object] = field(default_factory=dict)


def cache_prefix(source: Source) -> str:
    return f"cache/download/{stable_hash({'source': source.location, 'revision': source.revision}, 24)}"


def run(config: Config) -> Result:
    source = parse_source(config.source, config.revision)
    output = Path(config.output_dir)
    store = open_store(config.store_uri) if config.store_uri and source.cacheable else None
    prefix = cache_prefix(source)

    if store and config.use_cache and store.exists(f"{prefix}/{COMPLETE_MARKER}"):
        log.info("using cached %s from %s/%s", config.source, store.uri, prefix)
        store.download_dir(f"{prefix}/model", output)
        metadata = json.loads(store.read_text(f"{prefix}/{COMPLETE_MARKER}"))
        return Result(str(output), config.source, cached=True, metadata=metadata)

    log.info("fetching %s", config.source)
    metadata = fetch(source, output, config.hf_token_env)
    check_model_folder(output, config.source)
    if store:
        save_to_cache(store, prefix, output, metadata)
    return Result(str(output), config.source, cached=False, metadata=metadata)


def check_model_folder(folder: Path, source: str) -> None:
    if not (folder / "config.json").is_file():
        raise InputError(
            f"{source}: the fetched folder has no config.json, so it is not a Hugging Face model"
        )
    if not any(folder.glob("*.safetensors")):
        raise InputError(f"{source}: the fetched folder has no *.safetensors weights")


def save_to_cache(store: ArtifactStore, prefix: str, folder: Path, metadata: dict[str, object]) -> None:
    store.delete(prefix)
    store.upload_dir(folder, f"{prefix}/model")
    store.write_text(f"{prefix}/{COMPLETE_MARKER}", json.dumps(metadata))
    log.info("cached in %s/%s", store.uri, prefix)
