"""Every dataset format on small fixture files, raw text chunking in Chinese and English, bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common.config import from_dict
from components.common.errors import ConfigError, InputError
from components.teacher import Config
from components.teacher.chunking import chunk_text, split_sentences
from components.teacher.readers import ReadStats, read_prompts

FIXTURES = Path(__file__).parent / "fixtures"


def read(dataset, **overrides):
    stats = ReadStats()
    config = from_dict(Config, {"dataset": str(dataset), "output_dir": "/tmp/unused", **overrides})
    return list(read_prompts(config, stats)), stats


def test_alpaca_joins_instruction_and_input_and_keeps_output_as_reference():
    prompts, _ = read(FIXTURES / "alpaca.jsonl")
    assert [p.messages for p in prompts[:2]] == [
        [{"role": "user", "content": "Translate to French.\n\nGood morning"}],
        [{"role": "user", "content": "Name a primary colour."}],
    ]
    assert [p.reference for p in prompts] == ["Bonjour", "Red", "I love you"]
    assert prompts[2].messages[0] == {"role": "system", "content": "你是翻译助手。"}
    assert prompts[0].source.endswith("alpaca.jsonl:1")


def test_alpaca_as_a_json_list():
    prompts, _ = read(FIXTURES / "alpaca.json", dataset_format="alpaca")
    assert [p.messages[-1]["content"] for p in prompts] == [
        "Add the numbers.\n\n2 and 3",
        "Spell 'cat' backwards.",
    ]
    assert prompts[1].reference == "tac" and prompts[1].source.endswith("alpaca.json:item 2")


def test_sharegpt_keeps_history_and_takes_the_last_answer_as_reference():
    prompts, _ = read(FIXTURES / "sharegpt.jsonl")
    first, second = prompts
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant", "user"]
    assert first.messages[-1]["content"] == "What is 2+2?" and first.reference == "4"
    assert second.messages == [{"role": "user", "content": "天空是什么颜色？"}] and second.reference is None


def test_openai_messages_split_off_a_final_assistant_turn():
    prompts, _ = read(FIXTURES / "messages.jsonl")
    assert prompts[0].messages[-1] == {"role": "user", "content": "Capital of France?"}
    assert prompts[0].reference == "Paris" and prompts[1].reference is None


def test_auto_detects_each_format_from_a_folder(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("alpaca.jsonl", "sharegpt.jsonl", "messages.jsonl", "zh.txt"):
        (folder / name).write_bytes((FIXTURES / name).read_bytes())
    prompts, stats = read(folder, text={"chunk_chars": 200})
    assert stats.files == 4
    assert len(prompts) == 3 + 2 + 2 + 1


def test_system_prompt_and_template_apply_to_every_prompt():
    prompts, _ = read(
        FIXTURES / "messages.jsonl",
        system_prompt="You are a pirate.",
        prompt_template="Task: {prompt}\nAnswer briefly.",
    )
    for prompt in prompts:
        assert prompt.messages[0] == {"role": "system", "content": "You are a pirate."}
        assert sum(m["role"] == "system" for m in prompt.messages) == 1
    assert prompts[0].messages[-1]["content"] == "Task: Capital of France?\nAnswer briefly."
    jinja, _ = read(FIXTURES / "messages.jsonl", prompt_template="{{ prompt | upper }}!")
    assert jinja[1].messages[-1]["content"] == "REVERSE THE LETTERS OF: ABC!"


def test_bad_line_fails_with_file_and_line_by_default():
    with pytest.raises(InputError, match=r"prompts_bad\.jsonl:2: not valid JSON"):
        read(FIXTURES / "prompts_bad.jsonl")


def test_bad_lines_can_be_skipped_and_counted():
    prompts, stats = read(FIXTURES / "prompts_bad.jsonl", bad_lines="skip")
    assert [p.messages[0]["content"] for p in prompts] == [
        "Reverse the letters of: abc",
        "Reverse the letters of: sun",
    ]
    assert stats.skipped_lines == 3
    assert any("prompts_bad.jsonl:4: expected a JSON object" in e for e in stats.errors)
    assert any("prompts_bad.jsonl:5: field 'prompt' must be a non-empty string" in e for e in stats.errors)


def test_unknown_keys_name_the_line_and_the_fix(tmp_path):
    (tmp_path / "odd.jsonl").write_text('{"question": "why?"}\n')
    with pytest.raises(InputError, match=r"odd\.jsonl:1: cannot tell the dataset format.*dataset_format"):
        read(tmp_path / "odd.jsonl")


def test_chinese_sentences_split_after_full_width_punctuation_and_closing_quotes():
    text = (FIXTURES / "zh.txt").read_text()
    sentences = split_sentences(text)
    assert "".join(sentences) == text
    assert sentences[:4] == [
        "春天来了，花园里的花都开了。",
        "小明每天早上都去公园跑步！",
        "他觉得跑步让他精神焕发。",
        "你喜欢跑步吗？",
    ]
    assert "“真美啊。”" in sentences


def test_chunks_keep_sentences_whole_and_overlap_by_whole_sentences():
    text = (FIXTURES / "zh.txt").read_text()
    chunks = chunk_text(text, chunk_chars=30, overlap_chars=14)
    assert all(len(c.text) <= 30 for c in chunks)
    for chunk in chunks:
        assert chunk.text[-1] in "。！？；”", chunk.text  # every chunk ends on a sentence boundary
    assert chunks[0].text == "春天来了，花园里的花都开了。小明每天早上都去公园跑步！"
    assert chunks[1].text.startswith("小明每天早上都去公园跑步！")  # the overlap: one whole sentence
    assert chunks[-1].line == 2


def test_english_text_chunks_and_a_sentence_longer_than_a_chunk_is_cut():
    chunks = chunk_text((FIXTURES / "en.md").read_text(), chunk_chars=80)
    assert chunks[0].text == "Distillation moves knowledge from a large model into a small one."
    assert all(len(c.text) <= 80 for c in chunks)
    assert chunks[-1].text.endswith("It has two sentences.")
    long = chunk_text("x" * 50 + ".", chunk_chars=20)
    assert [len(c.text) for c in long] == [20, 20, 11]


def test_raw_text_becomes_prompts_through_a_template_file(tmp_path):
    prompts, _ = read(FIXTURES / "zh.txt", text={"chunk_chars": 60, "template": "qa"})
    assert all("Passage:" in p.messages[0]["content"] for p in prompts)
    template = tmp_path / "summarise.j2"
    template.write_text("用一句话总结：{{ chunk }}")
    mine, _ = read(FIXTURES / "zh.txt", text={"chunk_chars": 60, "template": str(template)})
    assert mine[0].messages[0]["content"].startswith("用一句话总结：春天来了")
    assert mine[0].source.endswith("zh.txt:1") and mine[-1].source.endswith("zh.txt:2")
    with pytest.raises(ConfigError, match="neither a shipped template"):
        read(FIXTURES / "zh.txt", text={"template": "no-such-template"})


def test_s3_dataset_is_read_through_the_store(s3_endpoint):
    import boto3

    boto3.client("s3").put_object(
        Bucket="distill", Key="data/alpaca.jsonl", Body=(FIXTURES / "alpaca.jsonl").read_bytes()
    )
    prompts, _ = read("s3://distill/data/alpaca.jsonl")
    assert [p.reference for p in prompts] == ["Bonjour", "Red", "I love you"]
    assert prompts[1].source == "s3://distill/data/alpaca.jsonl:2"
    with pytest.raises(InputError, match="s3://distill/data/missing.jsonl: no object"):
        read("s3://distill/data/missing.jsonl")
