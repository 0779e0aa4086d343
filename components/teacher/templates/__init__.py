"""Prompt templates as files users can replace: qa.j2 and continue.j2 for raw text, judge.j2 for the judge.

A template setting is either the name of a file shipped here ("qa", "continue", "judge") or the path of
a Jinja file of your own receiving the same variables.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from components.common.errors import ConfigError

HERE = Path(__file__).parent


@lru_cache(maxsize=32)
def _compile(source: str):
    import jinja2

    # StrictUndefined: a misspelt variable in a user's template is an error, not silently empty text.
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False).from_string(
        source
    )


def template_source(name_or_path: str) -> str:
    shipped = HERE / f"{name_or_path}.j2"
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    names = ", ".join(sorted(p.stem for p in HERE.glob("*.j2")))
    raise ConfigError(f"template {name_or_path!r}: neither a shipped template ({names}) nor a file")


def render_file_template(name_or_path: str, **variables: str) -> str:
    import jinja2

    try:
        return _compile(template_source(name_or_path)).render(**variables).strip()
    except jinja2.TemplateError as error:
        raise ConfigError(f"template {name_or_path!r}: {error}") from None


def render_prompt_template(template: str, prompt: str) -> str:
    """Wrap a user prompt: Jinja when the template holds '{{', else str.format with {prompt}."""
    path = Path(template).expanduser()
    if "\n" not in template and len(template) < 4096 and path.suffix in (".j2", ".txt") and path.is_file():
        template = path.read_text(encoding="utf-8")
    if "{{" in template or "{%" in template:
        import jinja2

        try:
            return _compile(template).render(prompt=prompt)
        except jinja2.TemplateError as error:
            raise ConfigError(f"prompt_template: {error}") from None
    try:
        return template.format(prompt=prompt)
    except (KeyError, IndexError, ValueError) as error:
        raise ConfigError(f"prompt_template: {error!r}; use {{prompt}} for the user prompt") from None
