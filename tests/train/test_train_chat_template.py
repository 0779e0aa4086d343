"""A student tokenizer without a chat template (Qwen v1, base models) is refused in one line naming
`chat_template` before training, or given ChatML with `chat_template: chatml`, then trained."""

from __future__ import annotations

import json
import shutil

import pytest

from components.common.errors import InputError
from components.train.stage import run


@pytest.fixture
def templateless_student(tmp_path, tiny_model_dir):
    folder = tmp_path / "qwen-v1-like"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


def test_a_tokenizer_without_a_chat_template_is_refused_by_name(make_config, templateless_student):
    with pytest.raises(InputError, match=r"^chat_template: the tokenizer of .* has no chat_template.*chatml"):
        run(make_config(student_dir=str(templateless_student)))


def test_chat_template_chatml_gives_such_a_tokenizer_chatml_and_trains(make_config, templateless_student):
    result = run(make_config(student_dir=str(templateless_student), chat_template="chatml", max_steps=2))
    assert result.steps == 2


def test_a_local_teacher_without_a_chat_template_is_refused_or_given_chatml(tmp_path, templateless_student):
    from components.common.config import from_dict
    from components.teacher.config import Config as TeacherConfig
    from components.teacher.local import LocalTeacher

    def teacher(**provider):
        settings = {"name": "local", "model": str(templateless_student), "max_tokens": 4, **provider}
        config = {
            "dataset": str(tmp_path / "p.jsonl"),
            "output_dir": str(tmp_path / "o"),
            "provider": settings,
        }
        return LocalTeacher(from_dict(TeacherConfig, config).provider)

    with pytest.raises(
        InputError, match=r"^provider\.chat_template: the tokenizer of .* has no chat_template"
    ):
        teacher().load()
    chatml = teacher(chat_template="chatml")
    answers = chatml.generate([[{"role": "user", "content": "Reverse the letters of: abc"}]])
    assert len(answers) == 1
