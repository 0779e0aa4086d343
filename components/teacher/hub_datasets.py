"""Rows of a Hugging Face dataset, `hf://datasets/org/name[@revision]`, through the `datasets` library.

    dataset: hf://datasets/AI-MO/NuminaMath-CoT@9d8d210
    dataset_split: train          # any split expression the datasets library takes, e.g. train[:1000]
    dataset_config: null          # the dataset's configuration (subset), when it has several

The repository's data files (parquet, JSON, JSONL, CSV, arrow; never loading scripts) are fetched once
into the Hugging Face cache (HF_HUB_CACHE; HF_TOKEN for gated datasets; HF_HUB_OFFLINE=1 reads only the
cache), then the split is streamed row by row, so its size does not matter. Each row is a mapping, read
like a JSON line: by its keys (`dataset_format: auto`), a named format, or the `fields` mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from components.common.errors import InputError
from components.common.secrets import optional_env

log = logging.getLogger(__name__)

PREFIX = "hf://datasets/"
# Data files only: a dataset repository may also hold loading scripts, which are code.
DATA_PATTERNS = ["*.parquet", "*.json", "*.jsonl", "*.json.gz", "*.jsonl.gz", "*.csv", "*.arrow", "README.md"]


def parse_dataset_uri(uri: str) -> tuple[str, str | None]:
    """(org/name, revision or None) of hf://datasets/org/name[@revision]."""
    repo, _, revision = uri[len(PREFIX) :].partition("@")
    return repo, revision or None


def snapshot(uri: str) -> str:
    """The local folder holding the dataset repository's data files at the requested revision."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, revision = parse_dataset_uri(uri)
    try:
        folder = snapshot_download(
            repo_id=repo,
            repo_type="dataset",
            revision=revision,
            allow_patterns=DATA_PATTERNS,
            token=optional_env("HF_TOKEN"),
        )
    except LocalEntryNotFoundError:
        raise InputError(
            f"dataset {uri}: not in the Hugging Face cache and the Hub cannot be reached; check the network, "
            "or fill HF_HUB_CACHE beforehand and set HF_HUB_OFFLINE=1"
        ) from None
    except HfHubHTTPError as error:
        raise InputError(
            f"dataset {uri}: the Hub refused it ({str(error).splitlines()[0]}); check the name and revision, "
            "and HF_TOKEN for gated datasets"
        ) from None
    log.info("dataset %s: revision %s", uri, folder.rstrip("/").rsplit("/", 1)[-1])
    return folder


def hub_rows(uri: str, split: str, config_name: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of the split, streamed; `where` reads `hf://datasets/org/name:split:row N`."""
    import datasets

    folder = snapshot(uri)
    try:
        rows = datasets.load_dataset(folder, name=config_name, split=split, streaming=True)
    except ValueError as error:
        # The datasets library names the configurations and splits it found.
        raise InputError(
            f"dataset {uri}: {str(error).splitlines()[0]}; check dataset_split and dataset_config"
        ) from None
    for number, row in enumerate(rows, start=1):
        yield f"{uri}:{split}:row {number}", dict(row)
