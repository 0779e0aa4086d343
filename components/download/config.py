"""Configuration of the download stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.common.config import exposed
from components.common.errors import ConfigError
from components.common.remote_code import check_pinned, opt_in_field


@dataclass
class Config:
    """Where the model comes from and where it goes.

    source: see its help (the forms are parsed in components/common/model_sources.py).
    output_dir: the folder that receives the model (the KFP Model artifact's path).
    store_uri: artifact store holding the download cache (local folder or s3://); empty disables caching.
    revision: branch, tag or commit for hub sources; overrides an @revision in `source`.
    hf_token_env: environment variable holding a Hugging Face token for gated or private models.
    use_cache: reuse a previous download of the same source and revision from the store.
    trust_remote_code: fetch the repository's Python files too, for models whose architecture lives in
        them (older Qwen, ...); needs a pinned revision (components/common/remote_code.py).
    keep_every: depth pruning (prune.py): keep layers 0, N, 2N, ... of the model; 1 keeps them all.
    """

    source: str = field(
        metadata=exposed(
            "student_source",
            "the student: hf://org/name[@rev], modelscope://org/name, s3://bucket/prefix, a folder or tiny://qwen2[?options].",
            pipeline_default="hf://Qwen/Qwen2.5-0.5B-Instruct",
        )
    )
    output_dir: str
    store_uri: str = ""
    revision: str | None = None
    hf_token_env: str = "HF_TOKEN"
    use_cache: bool = True
    trust_remote_code: bool = opt_in_field()
    keep_every: int = field(
        default=1,
        metadata=exposed(
            "student_keep_every",
            "depth pruning: keep every Nth decoder layer of the student (2: every other), then distil; 1 keeps all.",
        ),
    )

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ConfigError("source: empty; give hf://org/name, s3://bucket/prefix, a path or tiny://qwen2")
        if self.keep_every < 1:
            raise ConfigError(f"keep_every: {self.keep_every} must be at least 1 (1 keeps every layer)")
        if not self.output_dir:
            raise ConfigError("output_dir: empty; give the folder that receives the model")
        if self.trust_remote_code:
            from components.common.errors import InputError
            from components.common.model_sources import parse_source

            try:
                source = parse_source(self.source, self.revision)
            except InputError as error:
                raise ConfigError(f"source: {error}") from None
            check_pinned(source.scheme, source.revision)
