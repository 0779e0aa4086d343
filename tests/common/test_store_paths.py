"""The store never reads or writes outside its root, and never copies an object outside the target folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import boto3
import pytest

from components.common.errors import InputError
from components.common.store import open_store
from components.teacher import Config
from components.teacher.readers import read_prompts


@pytest.mark.parametrize("key", ["../outside.txt", "a/../../outside.txt", "ABSOLUTE", "a/./b"])
def test_the_local_store_refuses_keys_that_leave_its_root(tmp_path, key):
    store = open_store(str(tmp_path / "store"))
    key = str(tmp_path / "outside.txt") if key == "ABSOLUTE" else key
    with pytest.raises(InputError, match="store key .* is absolute or has a '.' or '..' part"):
        store.write_text(key, "planted")
    with pytest.raises(InputError):
        store.read_text(key)
    with pytest.raises(InputError):
        store.child(key)
    assert not (tmp_path / "outside.txt").exists()


def test_a_symlink_inside_the_local_store_does_not_lead_out_of_it(tmp_path):
    store = open_store(str(tmp_path / "store"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "store" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="outside"):
        store.write_text("link/planted.txt", "x")
    assert not (tmp_path / "elsewhere" / "planted.txt").exists()


def test_an_s3_object_named_with_dotdot_is_not_downloaded_outside_the_folder(s3_endpoint, tmp_path):
    s3 = boto3.client("s3")
    s3.put_object(Bucket="distill", Key="models/evil/config.json", Body=b"{}")
    s3.put_object(Bucket="distill", Key="models/evil/../../../escaped.txt", Body=b"planted")
    target = tmp_path / "a" / "b" / "model"
    with pytest.raises(InputError, match="outside"):
        open_store("s3://distill/models").download_dir("evil", target)
    assert not list(tmp_path.rglob("escaped.txt"))
    with pytest.raises(InputError, match="'..' part"):
        open_store("s3://distill").read_text("models/evil/../../../escaped.txt")


def test_the_teacher_dataset_download_stays_in_its_scratch_folder(s3_endpoint, tmp_path):
    s3 = boto3.client("s3")
    s3.put_object(Bucket="distill", Key="prompts/a.jsonl", Body=b'{"prompt": "hi"}\n')
    # Lands next to the scratch folder's parent (the system temp folder) without the check.
    s3.put_object(Bucket="distill", Key="prompts/../../teacher-escaped.jsonl", Body=b'{"prompt": "x"}\n')
    config = Config(
        dataset="s3://distill/prompts", output_dir=str(tmp_path / "out"), store_uri=str(tmp_path / "store")
    )
    with pytest.raises(InputError, match="outside"):
        list(read_prompts(config))
    assert not (Path(tempfile.gettempdir()).parent / "teacher-escaped.jsonl").exists()
    assert not (Path(tempfile.gettempdir()) / "teacher-escaped.jsonl").exists()


def test_folder_placeholders_of_s3_consoles_are_not_files(s3_endpoint, tmp_path):
    s3 = boto3.client("s3")
    s3.put_object(Bucket="distill", Key="placeholders/model/", Body=b"")
    s3.put_object(Bucket="distill", Key="placeholders/model/config.json", Body=b"{}")
    open_store("s3://distill/placeholders").download_dir("model", tmp_path / "model")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["config.json"]
