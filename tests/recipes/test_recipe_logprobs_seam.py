"""The logprobs seam, both real stages: each teacher producer (the API teacher synchronously and by batch
against a loopback OpenAI-compatible server through the openai SDK, the local Hugging Face teacher) writes
logprobs.parquet, and the train stage streams it and lines it up with the student's tokens: k candidates per position, and
Chinese text whose characters are split over tokens spelled byte for byte."""

from __future__ import annotations

import json
import math
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from components.common.config import from_dict
from components.common.logprobs_file import read_logprobs
from components.common.records import read_records
from components.common.store import open_store
from components.common.token_bytes import token_bytes
from components.teacher.stage import run as run_teacher
from components.train.data import Encoder
from components.train.sparse_kd import attach_topk
from components.train.stage import run as run_train
from pipelines.demo_teacher import start_teacher_server
from pipelines.model_teacher import start_model_teacher
from tests.conftest import approve_hosts
from tests.teacher.batch_teacher import start_batch_teacher
from tests.teacher.conftest import local_teacher_config, teacher_config

K = 4
PROMPTS = ["请解释知识蒸馏 (distillation) 是什么", "Reverse the letters of: kite", "用中文回答: 学生模型"]


@pytest.fixture(autouse=True)
def keyed(monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "sk-test")


@pytest.fixture
def approve(monkeypatch):
    """Approves a loopback teacher's host for the key, as an administrator lists a served teacher."""
    return lambda server: approve_hosts(monkeypatch, server.base_url)


@pytest.fixture
def student_tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_prompts(tmp_path) -> None:
    lines = [json.dumps({"prompt": prompt}, ensure_ascii=False) for prompt in PROMPTS]
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def tokenizer_logprobs(tokenizer):
    """A server whose teacher has the student's tokenizer (as vLLM serving a same-family teacher): each
    answer token as the tokenizer spells it, then k - 1 other tokens, as the OpenAI API writes them."""
    vocab = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    table = token_bytes(tokenizer)

    def logprobs_of(content: str, top: int) -> list[dict]:
        entries = []
        for index in tokenizer(content, add_special_tokens=False)["input_ids"]:
            others = [i for i in vocab[index % 7 :: 7] if i != index][: max(top - 1, 0)]
            ranked = [(index, -0.1)] + [
                (other, math.log((1 - math.exp(-0.1)) / 2 ** (r + 1))) for r, other in enumerate(others)
            ]
            entries.append(table.position(index, -0.1, ranked[:top]).to_dict())
        return entries

    return logprobs_of


def stored(out) -> list:
    """The teacher's records, each with the positions the logprobs file holds for it (None: none)."""
    positions = dict(read_logprobs(out))
    return [(record, positions.get(record.id)) for record in read_records(out / "train.jsonl")]


def assert_spelled_byte_for_byte(out) -> None:
    """The stored positions spell each answer exactly, Chinese characters split over tokens included."""
    for record, positions in stored(out):
        assert b"".join(bytes(p["bytes"]) for p in positions) == record.answer.encode()
    chinese = [(r, positions) for r, positions in stored(out) if any(ord(c) > 0x4E00 for c in r.answer)]
    assert chinese
    split = [p for _, positions in chinese for p in positions if not is_text(bytes(p["bytes"]))]
    assert split, "no stored token holds part of a character"


def is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def aligned(out, tokenizer, records=None):
    """The train stage's reading: `records` (all of train.jsonl by default) encoded, then the teacher's
    logprobs file streamed onto them."""
    records = read_records(out / "train.jsonl") if records is None else records
    examples = [Encoder(tokenizer, 256).encode(record) for record in records]
    return examples, attach_topk(examples, records, tokenizer, read_logprobs(out))


def assert_k_candidates_everywhere(out, tokenizer) -> None:
    examples, counts = aligned(out, tokenizer)
    assert counts.unaligned_records == counts.missing_records == counts.bad_positions == 0
    assert counts.mean_candidates == K
    for example, (_, positions) in zip(examples, stored(out), strict=True):
        rows = example.teacher_topk
        # Every answer token is matched with its k candidates; the end-of-turn token has no teacher data.
        assert len(rows) == len(positions) + 1 and rows[-1] is None
        assert all(len(row.ids) == K for row in rows[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_api_teacher_logprobs_give_train_k_candidates_and_exact_chinese_bytes(
    tmp_path, tiny_model_dir, student_tokenizer, stream, approve
):
    write_prompts(tmp_path)
    with start_teacher_server(api_key="sk-test", logprobs_of=tokenizer_logprobs(student_tokenizer)) as server:
        approve(server)
        config = teacher_config(
            tmp_path,
            server.base_url,
            provider={"logprobs": True, "top_logprobs": K, "stream": stream},
            test_ratio=0.0,
        )
        assert run_teacher(config).metrics["logprob_positions_dropped"] == 0
    assert len(stored(tmp_path / "out")) == len(PROMPTS)
    assert_spelled_byte_for_byte(tmp_path / "out")
    assert_k_candidates_everywhere(tmp_path / "out", student_tokenizer)


def test_api_teacher_with_its_own_tokens_splitting_characters_aligns_by_bytes(
    tmp_path, student_tokenizer, approve
):
    """The demo teacher cuts Chinese into two-byte tokens, the student into one-byte ones: positions
    starting together compare sorted probabilities over all k candidates."""
    write_prompts(tmp_path)
    with start_teacher_server(api_key="sk-test") as server:
        approve(server)
        run_teacher(
            teacher_config(
                tmp_path, server.base_url, provider={"logprobs": True, "top_logprobs": K}, test_ratio=0
            )
        )
    assert_spelled_byte_for_byte(tmp_path / "out")
    _, counts = aligned(tmp_path / "out", student_tokenizer)
    assert counts.unaligned_records == counts.bad_positions == 0
    assert counts.sorted_positions > 0 and counts.mean_candidates == pytest.approx(K, abs=1.5)


def test_batch_teacher_logprobs_give_train_k_candidates(tmp_path, student_tokenizer, approve):
    write_prompts(tmp_path)
    with start_batch_teacher(logprobs_of=tokenizer_logprobs(student_tokenizer)) as server:
        approve(server)
        config = teacher_config(
            tmp_path,
            server.base_url,
            mode="batch",
            batch={"poll_s": 0.02, "poll_max_s": 0.1},
            provider={"logprobs": True, "top_logprobs": K},
            test_ratio=0.0,
        )
        run_teacher(config)
    assert_spelled_byte_for_byte(tmp_path / "out")
    assert_k_candidates_everywhere(tmp_path / "out", student_tokenizer)


def test_local_teacher_logprobs_give_train_k_candidates(tmp_path, tiny_teacher_dir, student_tokenizer):
    write_prompts(tmp_path)
    config = local_teacher_config(
        tmp_path, tiny_teacher_dir, run_id="out", max_tokens=12, logprobs=True, top_logprobs=K
    )
    metrics = run_teacher(config).metrics
    assert_a_models_top_k_reach_train(tmp_path / "out", student_tokenizer, metrics)


def assert_a_models_top_k_reach_train(out, tokenizer, metrics: dict) -> None:
    """The answers a model generated with logprobs (a random tiny model writes some that are not UTF-8
    text, stored without and counted in the teacher's summary) are spelled by their positions, each
    aligned with the model's k candidates."""
    without = [record for record, positions in stored(out) if not positions]
    assert without and metrics["records_without_logprobs"] == len(without)
    with_logprobs = [(record, positions) for record, positions in stored(out) if positions]
    assert with_logprobs
    for record, positions in with_logprobs:
        assert b"".join(bytes(p["bytes"]) for p in positions) == record.answer.encode()
    _, counts = aligned(out, tokenizer, [record for record, _ in with_logprobs])
    assert counts.unaligned_records == counts.bad_positions == 0
    # Top-k ids of one model are distinct, so each maps to its own student id.
    assert counts.matched_positions > 0 and counts.mean_candidates == K


def test_train_stage_reports_candidates_per_position_and_warns_when_only_the_sampled_token_is_stored(
    tmp_path, tiny_model_dir, student_tokenizer, caplog, approve
):
    write_prompts(tmp_path)
    with start_teacher_server(api_key="sk-test", logprobs_of=tokenizer_logprobs(student_tokenizer)) as server:
        approve(server)
        for name, top in (("top", K), ("sampled", 0)):
            config = teacher_config(
                tmp_path,
                server.base_url,
                output_dir=str(tmp_path / name),
                run_id=name,
                provider={"logprobs": True, "top_logprobs": top},
                test_ratio=0.0,
            )
            run_teacher(config)
    summaries = {}
    for name in ("top", "sampled"):
        caplog.clear()
        train = train_config(tmp_path, tiny_model_dir, tmp_path / name, name)
        run_train(train)
        summaries[name] = json.loads((tmp_path / f"student-{name}" / "train_summary.json").read_text())
        warned = [r.message for r in caplog.records if "only the sampled token" in r.message]
        assert bool(warned) == (name == "sampled"), warned
    assert summaries["top"]["kd_alignment"]["mean_candidates"] == K
    assert summaries["sampled"]["kd_alignment"]["mean_candidates"] == 1


def train_config(tmp_path, student, data, name):
    from components.train import Config as TrainConfig

    return from_dict(
        TrainConfig,
        {
            "student_dir": str(student),
            "data_dir": str(data),
            "output_dir": str(tmp_path / f"student-{name}"),
            "tensorboard_dir": str(tmp_path / f"tb-{name}"),
            "max_steps": 2,
            "batch_size": 3,
            "logging_steps": 1,
            "max_length": 96,
            "kd": {"kind": "topk", "alpha": 0.5},
        },
    )


def test_a_served_model_answers_the_teacher_stage_with_top_k_train_aligns(
    tmp_path, tiny_teacher_dir, student_tokenizer
):
    """The quality bench's path: a model folder served as an OpenAI-compatible endpoint (as vLLM serves
    one), asked by the teacher stage through the openai SDK."""
    write_prompts(tmp_path)
    with start_model_teacher(tiny_teacher_dir, model="served") as server:
        config = teacher_config(
            tmp_path,
            server.base_url,
            provider={"model": "served", "logprobs": True, "top_logprobs": K, "max_tokens": 12},
            on_length="keep",
            test_ratio=0.0,
        )
        metrics = run_teacher(config).metrics
    assert_a_models_top_k_reach_train(tmp_path / "out", student_tokenizer, metrics)


def run_api_teacher_with_top_k(tmp_path, student_tokenizer, approve) -> None:
    """The teacher stage asks a loopback server of the student's tokens for K alternatives: tmp_path/out."""
    write_prompts(tmp_path)
    with start_teacher_server(api_key="sk-test", logprobs_of=tokenizer_logprobs(student_tokenizer)) as server:
        approve(server)
        config = teacher_config(
            tmp_path, server.base_url, provider={"logprobs": True, "top_logprobs": K}, test_ratio=0.0
        )
        run_teacher(config)


def test_the_teacher_stage_writes_parquet_the_train_stage_streams_and_earlier_jsonl_still_trains(
    tmp_path, tiny_model_dir, student_tokenizer, approve
):
    """Both stages' entry points on the stored logprobs: the teacher stage writes one zstd parquet file of
    token indices and float16 logprobs (no JSONL), the train stage trains on its k candidates; the same
    positions as the logprobs.jsonl an earlier version wrote give the train stage the same alignment."""
    run_api_teacher_with_top_k(tmp_path, student_tokenizer, approve)
    out = tmp_path / "out"
    assert not (out / "logprobs.jsonl").exists()
    columns = pq.ParquetFile(out / "logprobs.parquet").metadata.row_group(0)
    assert {columns.column(i).compression for i in range(columns.num_columns)} == {"ZSTD"}
    assert pq.read_schema(out / "logprobs.parquet").field("top_token").type == pa.list_(pa.list_(pa.int32()))

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    shutil.copy(out / "train.jsonl", earlier / "train.jsonl")
    lines = [json.dumps({"schema": 1, "id": i, "logprobs": p}) for i, p in read_logprobs(out)]
    (earlier / "logprobs.jsonl").write_text("\n".join(lines) + "\n")
    alignments = {}
    for name, data in (("parquet", out), ("jsonl", earlier)):
        run_train(train_config(tmp_path, tiny_model_dir, data, name))
        summary = json.loads((tmp_path / f"student-{name}" / "train_summary.json").read_text())
        alignments[name] = summary["kd_alignment"]
    assert alignments["parquet"]["mean_candidates"] == K
    assert alignments["parquet"]["matched_positions"] > 0
    assert alignments["parquet"]["missing_records"] == alignments["parquet"]["bad_positions"] == 0
    assert alignments["jsonl"] == alignments["parquet"]


def test_a_teacher_dataset_in_the_store_reaches_the_train_stage_with_its_logprobs(
    tmp_path, tiny_model_dir, student_tokenizer, approve, s3_endpoint
):
    """A pipeline's train task reads the teacher's folder from s3://: its logprobs come along."""
    run_api_teacher_with_top_k(tmp_path, student_tokenizer, approve)
    location = f"s3://distill/{tmp_path.name}/teacher-data"
    open_store(location).upload_dir(tmp_path / "out", "")
    run_train(train_config(tmp_path, tiny_model_dir, location, "s3"))
    summary = json.loads((tmp_path / "student-s3" / "train_summary.json").read_text())
    assert summary["kd_alignment"]["mean_candidates"] == K
