"""Fetch a model into a folder, through a cache in the artifact store: the download stage, and the train
task for its KD teacher.

A cached copy lives under `cache/download/<hash of source and revision>/`:

    copies/<time>-<random>/model/... one upload of the model folder, under a name no other upload uses
    _COMPLETE                        written last: which copy, each of its files' size and sha256, and the
                                     fetch's metadata (the resolved revision)

Two runs saving the same model at once each upload their own copy and the later marker wins, so the
marker always describes one whole copy. A pod killed mid-upload leaves no marker for its copy; copies no
marker names are deleted by a later save once they are a day old. Every cache
hit fetches only the files the marker lists and checks each one's size and sha256: a corrupted or
tampered copy is fetched again from the source (and the cache entry replaced), never used.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from components.common.errors import InputError
from components.common.model_sources import CODE_PATTERNS, Source, fetch, parse_source
from components.common.records import stable_hash
from components.common.remote_code import write_marker
from components.common.store import ArtifactStore, check_key, file_digest, open_store, path_under

log = logging.getLogger(__name__)
COMPLETE_MARKER = "_COMPLETE"
STALE_COPY_S = 24 * 3600


@dataclass
class Result:
    output_dir: str
    source: str
    cached: bool
    metadata: dict[str, object] = field(default_factory=dict)


def cache_prefix(source: Source) -> str:
    return f"cache/download/{stable_hash({'source': source.location, 'revision': source.revision}, 24)}"


def fetch_model(
    text: str,
    output_dir: str,
    store_uri: str = "",
    revision: str | None = None,
    hf_token_env: str = "HF_TOKEN",
    use_cache: bool = True,
    trust_remote_code: bool = False,
) -> Result:
    """Fetch the model source `text` into `output_dir`, from the cache under `store_uri` when it holds a
    whole copy (with `use_cache`), else from the source, then cache it there."""
    source = parse_source(text, revision)
    output = Path(output_dir)
    # Remote code never comes from the store's cache, which others may write to: always from the hub.
    cacheable = source.cacheable and not trust_remote_code
    store = open_store(store_uri) if store_uri and cacheable else None
    prefix = cache_prefix(source)

    if store and use_cache and store.exists(f"{prefix}/{COMPLETE_MARKER}"):
        metadata = load_from_cache(store, prefix, output, text)
        if metadata is not None:
            return Result(str(output), text, cached=True, metadata=metadata)

    log.info("fetching %s", text)
    metadata = fetch(source, output, hf_token_env, code=trust_remote_code)
    if trust_remote_code:
        write_marker(output, text, str(metadata.get("revision") or source.revision))
    else:
        remove_code_files(output, text)
    check_model_folder(output, text)
    if store:
        save_to_cache(store, prefix, output, metadata)
    return Result(str(output), text, cached=False, metadata=metadata)


def check_model_folder(folder: Path, source: str) -> None:
    if not (folder / "config.json").is_file():
        raise InputError(
            f"{source}: the fetched folder has no config.json, so it is not a Hugging Face model"
        )
    if not any(folder.glob("*.safetensors")):
        raise InputError(f"{source}: the fetched folder has no *.safetensors weights")


def remove_code_files(folder: Path, source: str) -> None:
    """Delete Python code a source brought along (a bucket or folder may hold a modeling_*.py)."""
    for pattern in CODE_PATTERNS:
        for path in sorted(folder.rglob(pattern)):
            log.warning("%s: removing %s; models are loaded without remote code", source, path.name)
            path.unlink()


def folder_manifest(folder: Path) -> dict[str, dict[str, object]]:
    """relative path -> size and sha256 of every file under `folder`."""
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": file_digest(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def save_to_cache(store: ArtifactStore, prefix: str, folder: Path, metadata: dict[str, object]) -> None:
    entry = store.child(prefix)
    copy = f"{int(time.time())}-{uuid.uuid4().hex[:12]}"
    files = folder_manifest(folder)
    entry.upload_dir(folder, f"copies/{copy}/model")
    if set(entry.list(f"copies/{copy}/model")) != {f"copies/{copy}/model/{rel}" for rel in files}:
        log.warning(
            "the cached copy %s/copies/%s lost files while uploading; not publishing it", entry.uri, copy
        )
        return
    entry.write_text(COMPLETE_MARKER, json.dumps({"copy": copy, "files": files, "metadata": metadata}))
    remove_stale_copies(entry, keep=json.loads(entry.read_text(COMPLETE_MARKER)).get("copy"))
    log.info("cached in %s", entry.uri)


def remove_stale_copies(entry: ArtifactStore, keep: str) -> None:
    """Delete copies the marker does not name once they are a day old: interrupted uploads, or runs that
    saved the same model at once. A younger one may still be uploading (a big model takes hours)."""
    for copy in {key.split("/")[1] for key in entry.list("copies")} - {keep}:
        started, _, _ = copy.partition("-")
        if not started.isdigit() or time.time() - int(started) > STALE_COPY_S:
            entry.delete(f"copies/{copy}")


def load_from_cache(store: ArtifactStore, prefix: str, output: Path, source: str) -> dict[str, object] | None:
    """Copy the cached model into `output`, checking every file; its metadata, or None to fetch anew."""
    entry = store.child(prefix)
    try:
        marker = json.loads(entry.read_text(COMPLETE_MARKER))
        files, model = marker["files"], f"copies/{check_key(marker['copy'])}/model"
        missing = {f"{model}/{rel}" for rel in files} - set(entry.list(model))
        if missing:
            raise InputError(f"{len(missing)} of its files are missing, e.g. {sorted(missing)[0]}")
        for rel, recorded in files.items():
            local = path_under(output, rel)
            entry.download_file(f"{model}/{rel}", local)
            if local.stat().st_size != recorded["size"] or file_digest(local) != recorded["sha256"]:
                raise InputError(f"{rel} differs from the size and sha256 the marker records")
        check_model_folder(output, source)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:  # InputError is a ValueError
        log.warning(
            "the cached copy of %s in %s cannot be used (%s); fetching it again", source, entry.uri, error
        )
        shutil.rmtree(output, ignore_errors=True)
        return None
    log.info("using cached %s from %s", source, entry.uri)
    return marker.get("metadata", {})
