"""Shared by the recipe tests: the shipped recipes and the compiled pipeline they are checked against, a
teacher adapter, and the data the source tests and the recipe pipelines read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.recipe_stand_ins import tiny_teacher_adapter
from pipelines.submit import compile_package

RECIPES = sorted((Path(__file__).resolve().parents[2] / "pipelines" / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_package(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")


@pytest.fixture(scope="module")
def teacher_adapter(tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny teacher whose B matrices are not zero, so it changes the teacher."""
    return tiny_teacher_adapter(tmp_path_factory.mktemp("teacher-adapter"))


COMMENTS = [
    {"video_title": "猫猫做饭", "video_desc": "第一次下厨", "parent_comment": "好可爱", "reply": "哈哈哈"},
    {"video_title": "Rust 入门", "video_desc": "所有权讲解", "parent_comment": "听懂了", "reply": "真的吗"},
]

LONG_ZH = (
    "蒸汽机的出现改变了工厂的布局，工人们不再需要住在河边，城市因此迅速扩张，铁路把原料和产品运往各地，" * 2
)
LONG_EN = (
    "The steam engine freed factories from rivers, cities grew around the new mills and railways carried "
)
TEXT = (f"# 第三章\n{LONG_ZH}市场也随之扩大。\n## Notes\n{LONG_EN}coal and cloth across the country.\n") * 4


def lay_out_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> str:
    """The Hugging Face cache as snapshot_download leaves it after downloading `files` of dataset `repo`
    at one commit: refs/main, snapshots/<commit>/..., and the commit's tree listing."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    commit = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
    storage = cache / f"datasets--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    entries = {}
    for name, data in files.items():
        path = storage / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries[name] = TreeCacheEntry(size=len(data), blob_id=hashlib.sha1(data).hexdigest())
    write_tree_cache(str(storage), commit, entries)
    return commit


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def messages(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
