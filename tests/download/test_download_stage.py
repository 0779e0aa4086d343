"""The download stage: every source kind, the cache in the artifact store, and errors users can act on."""

import json
import os
import subprocess
import sys

import pytest

from components.common.errors import ConfigError, InputError
from components.common.store import open_store
from components.download import Config, run
from components.download.sources import parse_source
from components.download.stage import COMPLETE_MARKER, cache_prefix

TINY = "tiny://qwen2?warmup_steps=0&hidden=64&intermediate=128&layers=1"


def model_files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("text", "scheme", "location", "revision"),
    [
        ("hf://Qwen/Qwen2.5-0.5B-Instruct", "hf", "Qwen/Qwen2.5-0.5B-Instruct", None),
        ("hf://Qwen/Qwen2.5-0.5B-Instruct@v1.0", "hf", "Qwen/Qwen2.5-0.5B-Instruct", "v1.0"),
        ("modelscope://qwen/Qwen2.5-0.5B-Instruct", "modelscope", "qwen/Qwen2.5-0.5B-Instruct", None),
        ("s3://models/qwen/", "s3", "models/qwen", None),
        ("/data/models/qwen", "local", "/data/models/qwen", None),
        (TINY, "tiny", TINY, None),
    ],
)
def test_sources_parse(text, scheme, location, revision):
    source = parse_source(text)
    assert (source.scheme, source.location, source.revision) == (scheme, location, revision)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hf://just-a-name", "expected hf://org/name[@revision]"),
        ("gs://bucket/model", "unknown scheme 'gs'"),
        ("s3://", "expected s3://bucket/prefix"),
        ("tiny://llama", "only tiny://qwen2"),
    ],
)
def test_bad_sources_are_explained(tmp_path, text, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run(Config(source=text, output_dir=str(tmp_path / "out")))


def test_empty_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="source"):
        Config(source=" ", output_dir=str(tmp_path))


def test_tiny_model_is_made_and_then_served_from_the_cache(tmp_path):
    store_uri = str(tmp_path / "store")
    first = run(Config(source=TINY, output_dir=str(tmp_path / "a"), store_uri=store_uri))
    second = run(Config(source=TINY, output_dir=str(tmp_path / "b"), store_uri=store_uri))
    assert (first.cached, second.cached) == (False, True)
    assert model_files(tmp_path / "a") == model_files(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    assert second.metadata["parameters"] == first.metadata["parameters"]


def test_a_cache_entry_without_its_completion_marker_is_ignored(tmp_path):
    store = open_store(str(tmp_path / "store"))
    prefix = cache_prefix(parse_source(TINY))
    store.write_text(f"{prefix}/model/config.json", "{half written")
    result = run(Config(source=TINY, output_dir=str(tmp_path / "out"), store_uri=store.uri))
    assert not result.cached
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "qwen2"
    assert store.exists(f"{prefix}/{COMPLETE_MARKER}")


def test_local_folder_is_copied(tiny_model_dir, tmp_path):
    result = run(
        Config(source=str(tiny_model_dir), output_dir=str(tmp_path / "out"), store_uri=str(tmp_path / "s"))
    )
    assert not result.cached
    assert model_files(tmp_path / "out") == model_files(tiny_model_dir)
    assert not (tmp_path / "s" / "cache").exists(), "local folders are used in place, never cached"


def test_local_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        run(Config(source=str(tmp_path / "empty"), output_dir=str(tmp_path / "out")))


def test_s3_source_and_s3_cache(s3_endpoint, tiny_model_dir, tmp_path):
    open_store("s3://distill/models/tiny").upload_dir(tiny_model_dir, "")
    config = dict(source="s3://distill/models/tiny", store_uri="s3://distill/store")
    first = run(Config(output_dir=str(tmp_path / "a"), **config))
    second = run(Config(output_dir=str(tmp_path / "b"), **config))
    assert (first.cached, second.cached) == (False, True)
    assert model_files(tmp_path / "b") == model_files(tiny_model_dir)


def test_unreachable_hub_names_the_fix(tmp_path):
    """The real huggingface_hub code path, pointed at a closed loopback port."""
    code = (
        "from components.download import Config, run\n"
        f"run(Config(source='hf://Qwen/Qwen2.5-0.5B', output_dir={str(tmp_path / 'out')!r}))\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "hf://Qwen/Qwen2.5-0.5B" in done.stderr
    assert "cannot reach the Hugging Face Hub" in done.stderr
    assert "HF_ENDPOINT" in done.stderr


def test_modelscope_without_its_package_says_which_extra(tmp_path):
    try:
        import modelscope  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"kfp-distill\[modelscope\]"):
            run(Config(source="modelscope://qwen/Qwen2.5-0.5B", output_dir=str(tmp_path / "out")))
    else:
        pytest.skip("modelscope is installed here, so the missing-package error cannot occur")
