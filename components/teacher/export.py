"""Copies of the kept records for other trainers (`export` in the teacher's Config).

sharegpt: output_dir/sharegpt/train.json and test.json (lists of {"conversations": [{"from": "human" |
"gpt", "value": ...}], "system": ...}) with the dataset_info.json LLaMA-Factory reads, so that

    llamafactory-cli train ... --dataset_dir <data artifact>/sharegpt --dataset distill_train

trains on them. alpaca: output_dir/alpaca/train.jsonl and test.jsonl, one {"instruction", "input": "",
"output"} row per record (plus "system" when it has one), and for raw text the chunk's "chunk_id" and the
prompt kind's "category" (问答 for question-answer prompts, 文章生成 for continuations, else the kind's
name), the rows the published raw-text recipe trains on. dpo: output_dir/dpo/train.jsonl, one preference
pair per answer the judge rejected, in TRL's conversational form {"prompt": [messages], "chosen":
[{"role": "assistant", "content": <the gold answer>}], "rejected": [... <the teacher's answer>]}, which
TRL's DPOTrainer takes for a preference stage after SFT. The teacher's reasoning, when a record has it
and the answer does not already hold it, goes before the answer as <think>...</think>, as R1-style
reasoning datasets write it (sharegpt).
"""

from __future__ import annotations

import json
from pathlib import Path

from components.common.records import Record, iter_jsonl

SHAREGPT_FROM = {"user": "human", "assistant": "gpt"}
# The published raw-text recipe's category of each shipped prompt kind.
ALPACA_CATEGORIES = {"qa": "问答", "qa_zh": "问答", "continue": "文章生成", "continue_zh": "文章生成"}


def sharegpt_row(record: Record) -> dict:
    system = "\n".join(m["content"] for m in record.messages if m["role"] == "system")
    turns = [
        {"from": SHAREGPT_FROM[m["role"]], "value": m["content"]}
        for m in record.messages
        if m["role"] in SHAREGPT_FROM
    ]
    if record.reasoning and not turns[-1]["value"].lstrip().startswith("<think>"):
        turns[-1] = {
            "from": "gpt",
            "value": f"<think>\n{record.reasoning.strip()}\n</think>\n\n{turns[-1]['value']}",
        }
    return {"conversations": turns, "system": system} if system else {"conversations": turns}


def write_sharegpt(output: Path, splits: tuple[str, ...]) -> None:
    """output/sharegpt/<split>.json from output/<split>.jsonl, a record at a time, and dataset_info.json."""
    folder = output / "sharegpt"
    folder.mkdir(parents=True, exist_ok=True)
    info = {}
    for split in splits:
        source = output / f"{split}.jsonl"
        with (folder / f"{split}.json").open("w", encoding="utf-8") as rows:
            rows.write("[")
            for count, (number, obj) in enumerate(iter_jsonl(source)):
                row = sharegpt_row(Record.from_dict(obj, f"{source}:{number}"))
                rows.write(("," if count else "") + "\n" + json.dumps(row, ensure_ascii=False))
            rows.write("\n]\n")
        info[f"distill_{split}"] = {
            "file_name": f"{split}.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
        }
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def alpaca_row(record: Record) -> dict:
    system = "\n".join(m["content"] for m in record.messages if m["role"] == "system")
    user = [m["content"] for m in record.messages if m["role"] == "user"]
    row = {"instruction": user[-1], "input": "", "output": record.answer}
    if system:
        row["system"] = system
    if "chunk" in record.extra:
        row["chunk_id"] = record.extra["chunk"]
    kind = record.extra.get("prompt_kind")
    if kind is not None:
        row["category"] = ALPACA_CATEGORIES.get(kind, kind)
    return row


def write_alpaca(output: Path, splits: tuple[str, ...]) -> None:
    """output/alpaca/<split>.jsonl from output/<split>.jsonl, a record at a time."""
    folder = output / "alpaca"
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        source = output / f"{split}.jsonl"
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as rows:
            for number, obj in iter_jsonl(source):
                row = alpaca_row(Record.from_dict(obj, f"{source}:{number}"))
                rows.write(json.dumps(row, ensure_ascii=False) + "\n")


def dpo_pair(record: Record) -> dict:
    """The gold answer chosen over a rejected answer; an answer accepted after the hint (hinted.jsonl)
    chosen over the teacher's first, unhinted one."""
    hint = record.judge or {}
    if hint.get("hint") == "accepted":
        chosen, rejected = record.answer, hint["unhinted_answer"]
    else:
        chosen, rejected = record.reference, record.answer
    return {
        "prompt": record.prompt_messages,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def write_dpo_pairs(output: Path) -> None:
    """output/dpo/train.jsonl from output/rejected.jsonl (the records whose answer the judge rejected
    against their gold answer: every rejected record has one) and output/hinted.jsonl."""
    folder = output / "dpo"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.jsonl").open("w", encoding="utf-8") as pairs:
        for source in (output / "rejected.jsonl", output / "hinted.jsonl"):
            if not source.exists():
                continue
            for number, obj in iter_jsonl(source):
                record = Record.from_dict(obj, f"{source}:{number}")
                if record.reference and record.answer:
                    pairs.write(json.dumps(dpo_pair(record), ensure_ascii=False) + "\n")
