"""Model sources: parse a source string and fetch the model folder it names.

hf://Qwen/Qwen2.5-0.5B-Instruct[@revision]   Hugging Face Hub (huggingface_hub.snapshot_download)
modelscope://qwen/Qwen2.5-0.5B-Instruct      ModelScope (extra `modelscope`, imported only when used)
s3://bucket/prefix                           any S3 API (boto3)
/path/to/model or ./model                    a local folder
tiny://qwen2?layers=2&hidden=128             a tiny model made on the spot (see tiny_model.py)

No source brings code: Python files are never fetched from a hub (and removed from every fetched folder,
see stage.py), and models are loaded without trust_remote_code, unless a run opts in with
trust_remote_code and a pinned revision (components/common/remote_code.py). A Hugging Face download is pinned to
one commit: the requested revision (a branch by default: main) is resolved first, every file comes from
that commit, and the commit is recorded in the artifact's metadata.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.common.errors import InputError
from components.common.secrets import optional_env
from components.common.store import open_store

# Files a Hugging Face model folder needs; weights in other formats (.bin, .pth, gguf) are not fetched.
HF_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
# Never fetched, whatever the patterns above: remote code would run wherever the model is loaded.
CODE_PATTERNS = ["*.py", "*.pyc", "*.so"]


@dataclass(frozen=True)
class Source:
    scheme: str  # hf, modelscope, s3, local, tiny
    location: str  # repo id, bucket/prefix, path or the full tiny:// source
    revision: str | None = None

    @property
    def cacheable(self) -> bool:
        """Local folders are used in place; everything else is worth keeping in the store."""
        return self.scheme != "local"


def parse_source(text: str, revision: str | None = None) -> Source:
    text = text.strip()
    if not text:
        raise InputError(
            "source is empty: give hf://org/name, modelscope://org/name, s3://…, a path or tiny://qwen2"
        )
    scheme, sep, rest = text.partition("://")
    if not sep:
        return Source("local", text)
    if scheme in ("hf", "modelscope"):
        repo, _, at_revision = rest.partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise InputError(f"source {text!r}: expected {scheme}://org/name[@revision]")
        return Source(scheme, repo, revision or at_revision or None)
    if scheme == "s3":
        if not rest.strip("/"):
            raise InputError(f"source {text!r}: expected s3://bucket/prefix")
        return Source("s3", rest.strip("/"))
    if scheme == "tiny":
        return Source("tiny", text)
    raise InputError(
        f"source {text!r}: unknown scheme {scheme!r}; use hf, modelscope, s3, tiny or a local path"
    )


def fetch(source: Source, destination: Path, token_env: str, code: bool = False) -> dict[str, object]:
    """Put the model named by `source` into `destination`; returns facts for the artifact metadata.
    `code`: a hub source's Python files come too (trust_remote_code, pinned by the Config)."""
    destination.mkdir(parents=True, exist_ok=True)
    if source.scheme == "hf":
        return _fetch_hf(source, destination, token_env, code)
    if source.scheme == "modelscope":
        return _fetch_modelscope(source, destination, code)
    if source.scheme == "s3":
        open_store(f"s3://{source.location}").download_dir("", destination)
        return {}
    if source.scheme == "tiny":
        from components.common.tiny_model import make_tiny_model

        return make_tiny_model(source.location, destination)
    return _copy_local(Path(source.location), destination)


def hf_snapshot_arguments(
    repo: str, commit: str, destination: Path, token: str | None, code: bool = False
) -> dict[str, object]:
    """The snapshot_download call: one commit, the model files only, code only with `code`."""
    return {
        "repo_id": repo,
        "revision": commit,
        "local_dir": destination,
        "allow_patterns": [*HF_PATTERNS, "*.py"] if code else HF_PATTERNS,
        "ignore_patterns": ["*.pyc", "*.so"] if code else CODE_PATTERNS,
        "token": token,
    }


def _fetch_hf(source: Source, destination: Path, token_env: str, code: bool) -> dict[str, object]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    token = optional_env(token_env)
    requested = source.revision or "main"
    try:
        # A branch moves: resolving it once makes every file come from the same commit, and names it.
        commit = HfApi().model_info(source.location, revision=requested, token=token).sha
        snapshot_download(**hf_snapshot_arguments(source.location, commit, destination, token, code))
    except HfHubHTTPError as error:
        raise InputError(
            f"hf://{source.location}: the Hub refused the download ({error}). Check the repo id and revision; "
            f"for gated or private models put a token in {token_env}."
        ) from None
    except _network_errors() as error:
        raise InputError(
            f"hf://{source.location}: cannot reach the Hugging Face Hub ({error}). Set HF_ENDPOINT for a "
            "mirror, or stage the model in S3 and use s3://bucket/prefix."
        ) from None
    shutil.rmtree(destination / ".cache", ignore_errors=True)
    return {"revision": commit, "requested_revision": requested}


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures of the HTTP client huggingface_hub uses: requests' are OSErrors, httpx's not."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except ImportError:
            continue
    return tuple(errors)


def _fetch_modelscope(source: Source, destination: Path, code: bool) -> dict[str, object]:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise InputError(
            "modelscope:// sources need the modelscope package: pip install 'kfp-distill[modelscope]'"
        ) from None
    # ignore_file_pattern holds regular expressions (ModelScope's own parameter since 1.x).
    snapshot_download(
        source.location,
        revision=source.revision,
        local_dir=str(destination),
        ignore_file_pattern=[r"\.pyc$", r"\.so$"] if code else [r"\.py$", r"\.pyc$", r"\.so$"],
    )
    return {"revision": source.revision or "master"}


def _copy_local(path: Path, destination: Path) -> dict[str, object]:
    if not (path / "config.json").is_file():
        raise InputError(f"local model {path} is not a Hugging Face model folder (no config.json)")
    shutil.copytree(path, destination, dirs_exist_ok=True)
    return {}
