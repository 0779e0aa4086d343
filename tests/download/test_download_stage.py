"""The download stage: every source kind, the cache in the artifact store, and errors users can act on."""

import json
import os
import subprocess
import sys
import time

import pytest

from components.common.errors import ConfigError, InputError
from components.common.model_download import COMPLETE_MARKER, cache_prefix
from components.common.model_sources import parse_source
from components.common.store import open_store
from components.download import Config
from components.download.stage import run
from tests.download.conftest import FakeHub, repo_files

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
        "from components.download import Config\nfrom components.download.stage import run\n"
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


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        return f"s3://distill/{tmp_path.name}"
    return str(tmp_path / "store")


def cached_files(store, name: str) -> list[str]:
    """Every stored copy of the model file `name` in TINY's cache entry."""
    prefix = cache_prefix(parse_source(TINY))
    return [key for key in store.list(prefix) if key.rsplit("/", 1)[-1] == name]


def test_a_cached_copy_that_changed_is_fetched_again_not_used(store_uri, tmp_path):
    store = open_store(store_uri)
    first = run(Config(source=TINY, output_dir=str(tmp_path / "a"), store_uri=store_uri))
    weights = (tmp_path / "a" / "model.safetensors").read_bytes()
    # Same size, other bytes: a tampered file, or one half-overwritten by a run saving the same model.
    [stored] = cached_files(store, "model.safetensors")
    store.write_bytes(stored, weights[:-8] + b"tampered")
    second = run(Config(source=TINY, output_dir=str(tmp_path / "b"), store_uri=store_uri))
    assert (first.cached, second.cached) == (False, False)
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == weights
    # The entry now names a good copy, which the next run uses.
    third = run(Config(source=TINY, output_dir=str(tmp_path / "c"), store_uri=store_uri))
    assert third.cached and (tmp_path / "c" / "model.safetensors").read_bytes() == weights


def test_a_cached_copy_missing_a_file_is_fetched_again(tmp_path):
    store_uri = str(tmp_path / "store")
    run(Config(source=TINY, output_dir=str(tmp_path / "a"), store_uri=store_uri))
    store = open_store(store_uri)
    [stored] = cached_files(store, "config.json")
    store.delete(stored)
    again = run(Config(source=TINY, output_dir=str(tmp_path / "b"), store_uri=store_uri))
    assert not again.cached
    assert model_files(tmp_path / "b") == model_files(tmp_path / "a")


def test_two_runs_saving_the_same_model_at_once_leave_one_whole_copy(tiny_model_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from components.common.model_download import save_to_cache

    store = open_store(str(tmp_path / "store"))
    prefix = cache_prefix(parse_source(TINY))
    # Two different folders under one cache entry: a mix of the two would be caught file by file.
    other = tmp_path / "other"
    run(Config(source=TINY.replace("layers=1", "layers=2"), output_dir=str(other)))
    folders = [tiny_model_dir, other] * 3
    with ThreadPoolExecutor(len(folders)) as pool:
        list(pool.map(lambda folder: save_to_cache(store, prefix, folder, {}), folders))
    result = run(Config(source=TINY, output_dir=str(tmp_path / "out"), store_uri=store.uri))
    assert result.cached
    got = (tmp_path / "out" / "model.safetensors").read_bytes()
    wanted = [(folder / "model.safetensors").read_bytes() for folder in (tiny_model_dir, other)]
    assert got in wanted
    source = tiny_model_dir if got == wanted[0] else other
    assert model_files(tmp_path / "out") == model_files(source)
    # The others stay (one might still be uploading) until a later save finds them a day old.
    entry = store.child(prefix)
    assert len({key.split("/")[1] for key in entry.list("copies")}) == len(folders)
    entry.write_text(f"copies/{int(time.time()) - 2 * 86400}-interrupted/model/config.json", "{}")
    save_to_cache(store, prefix, tiny_model_dir, {})
    copies = {key.split("/")[1] for key in entry.list("copies")}
    assert len(copies) == len(folders) + 1 and not any(c.endswith("-interrupted") for c in copies)


def test_no_python_file_from_a_source_reaches_the_model_folder(s3_endpoint, tiny_model_dir, tmp_path):
    bucket = open_store("s3://distill/models/with-code")
    bucket.upload_dir(tiny_model_dir, "")
    bucket.write_text("modeling_evil.py", "import os; os.system('id')\n")
    bucket.write_text("sub/__init__.py", "")
    config = dict(source="s3://distill/models/with-code", store_uri="s3://distill/store-code")
    first = run(Config(output_dir=str(tmp_path / "a"), **config))
    assert not list((tmp_path / "a").rglob("*.py"))
    assert model_files(tmp_path / "a") == sorted([*model_files(tiny_model_dir), "sub"])
    second = run(Config(output_dir=str(tmp_path / "b"), **config))
    assert (first.cached, second.cached) == (False, True)
    assert not list((tmp_path / "b").rglob("*.py"))


def test_a_hub_download_is_one_commit_of_model_files_without_code(tmp_path):
    from fnmatch import fnmatch

    from components.common.model_sources import hf_snapshot_arguments

    commit = "0123456789abcdef0123456789abcdef01234567"
    arguments = hf_snapshot_arguments("Qwen/Qwen2.5-0.5B", commit, tmp_path, None)
    assert arguments["revision"] == commit
    for name in ("modeling_qwen.py", "tokenization_qwen.py", "sub/configuration.py"):
        assert not any(fnmatch(name, p) for p in arguments["allow_patterns"])
        assert any(fnmatch(name, p) for p in arguments["ignore_patterns"])
    for name in ("config.json", "model-00001-of-00002.safetensors", "tokenizer.json", "merges.txt"):
        assert any(fnmatch(name, p) for p in arguments["allow_patterns"])


def test_a_hub_download_through_huggingface_hub_pins_the_commit_and_skips_code(tiny_model_dir, tmp_path):
    """The real huggingface_hub code, against a loopback Hub whose main branch is at COMMIT."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    files = {**repo_files(tiny_model_dir), "modeling_evil.py": b"import os\n", "sub/helper.py": b""}
    with FakeHub("org/tiny", files, {"main": commit}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home")}
        code = (
            "import json\nfrom components.download import Config\nfrom components.download.stage import run\n"
            f"result = run(Config(source='hf://org/tiny', output_dir={str(tmp_path / 'out')!r}))\n"
            "print(json.dumps(result.metadata))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
    metadata = json.loads(done.stdout.strip().splitlines()[-1])
    assert metadata == {"revision": commit, "requested_revision": "main"}
    assert model_files(tmp_path / "out") == model_files(tiny_model_dir)
    # The branch was resolved once; every file was then asked for at that commit, and no code at all.
    fetched = [r for r in hub.requests if "/resolve/" in r]
    assert fetched and all(f"/resolve/{commit}/" in r for r in fetched)
    assert not any(r.endswith(".py") for r in hub.requests)
