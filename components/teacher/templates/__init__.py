"""Prompt templates as files users can replace: qa.j2 and continue.j2 for raw text, judge.j2 for the judge.

A template setting is either the name of a file shipped here ("qa", "continue", "judge") or the path of
a Jinja file of your own receiving the same variables.

Templates are run parameters (`teacher_overrides`), so they are untrusted: they render in Jinja's
immutable sandbox, where a template sees its variables and the filters but no attribute starting with
'_' and no method that changes a value ({{ cycler.__init__.__globals__ }} is refused, not evaluated). The
teacher's Config renders each one once with sample values when it loads, so a refused template stops the
run before any request.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from components.common.errors import ConfigError
from components.common.secrets import refuse_secret_path

HERE = Path(__file__).parent


@lru_cache(maxsize=32)
def _compile(source: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # StrictUndefined: a misspelt variable in a user's template is an error, not silently empty text.
    environment = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    return environment.from_string(source)


def _render(source: str, where: str, variables: dict[str, str]) -> str:
    import jinja2

    try:
        return _compile(source).render(**variables)
    except jinja2.TemplateError as error:
        line = f" (line {error.lineno})" if getattr(error, "lineno", None) else ""
        raise ConfigError(
            f"{where}: {error.message}{line}; a template may use only its variables "
            f"({', '.join(sorted(variables))}) and Jinja's filters"
        ) from None


def template_source(name_or_path: str, field: str = "template") -> str:
    shipped = HERE / f"{name_or_path}.j2"
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    path = Path(name_or_path).expanduser()
    if path.is_file():
        refuse_secret_path(path, field)
        return path.read_text(encoding="utf-8")
    names = ", ".join(sorted(p.stem for p in HERE.glob("*.j2")))
    raise ConfigError(f"{field}: {name_or_path!r} is neither a shipped template ({names}) nor a file")


def render_file_template(name_or_path: str, *, field: str = "template", **variables: str) -> str:
    """The template `name_or_path` rendered with `variables`; errors name `field`, the config setting."""
    return _render(template_source(name_or_path, field), f"{field} {name_or_path!r}", variables).strip()


def render_prompt_template(template: str, prompt: str | None, row: Mapping[str, Any] | None = None) -> str:
    """Wrap a user prompt: Jinja when the template holds '{{', else str.format with {prompt}. A Jinja
    template also sees every field of the dataset row (`fields` mapping), e.g. {{ video_title }}."""
    template = _prompt_template_source(template)
    if "{{" in template or "{%" in template:
        variables = {**(row or {}), **({"prompt": prompt} if prompt is not None else {})}
        return _render(template, "prompt_template", variables)
    if prompt is None:
        raise ConfigError(
            "prompt_template: without fields.question the prompt comes from the row's fields; write it in "
            "Jinja, e.g. {{ title }}"
        )
    _check_format_fields(template)
    try:
        return template.format(prompt=prompt)
    except ValueError as error:
        raise ConfigError(f"prompt_template: {error}; use {{prompt}} for the user prompt") from None


def template_variables(template: str) -> set[str]:
    """The names a Jinja prompt template reads (for checking it at load with a sample of each)."""
    import jinja2
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    source = _prompt_template_source(template)
    try:
        return meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(source))
    except jinja2.TemplateSyntaxError as error:
        raise ConfigError(f"prompt_template: {error.message} (line {error.lineno})") from None


def _prompt_template_source(template: str) -> str:
    path = Path(template).expanduser()
    if "\n" not in template and len(template) < 4096 and path.suffix in (".j2", ".txt") and path.is_file():
        refuse_secret_path(path, "prompt_template")
        return path.read_text(encoding="utf-8")
    return template


def _check_format_fields(template: str) -> None:
    """Allow only plain {prompt} fields: str.format would follow {prompt.attr} and {prompt[i]} too."""
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ConfigError(f"prompt_template: {error}; write literal braces as {{{{ and }}}}") from None
    for name, spec in fields:
        if name != "prompt" or "{" in (spec or ""):
            raise ConfigError(
                f"prompt_template: {{{name}}} is not allowed; use {{prompt}} for the user prompt"
            )
