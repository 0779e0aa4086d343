"""Every field of a stage's Config as `python -m components.<stage> --help` lists it: dotted name, type,
default and help, read from the Config itself, so the list cannot drift from the code:

    lora.r  int = 16
        LoRA rank of the update matrices.

A field's help is, in order: its pipeline parameter's help (`exposed(...)`), the comment lines right above
it in the class, or its entry (`name: text`) in the class docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from collections.abc import Iterator
from typing import Any

INDENT = "    "


@dataclasses.dataclass(frozen=True)
class FieldHelp:
    path: str
    type: str
    default: str
    help: str


def describe_fields(cls: type, prefix: str = "") -> Iterator[FieldHelp]:
    """FieldHelp for each field of `cls`, nested dataclasses as dotted paths (`lora.r`, `phases[].name`)."""
    hints = typing.get_type_hints(cls)
    helps = _source_help(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint, path = hints[f.name], f"{prefix}{f.name}"
        item = _list_item(hint)
        if dataclasses.is_dataclass(hint):
            yield from describe_fields(hint, f"{path}.")
        elif item is not None and dataclasses.is_dataclass(item):
            yield from describe_fields(item, f"{path}[].")
        else:
            help_text = f.metadata.get("help") or helps.get(f.name, "")
            yield FieldHelp(path, _type_name(hint), _default(f), help_text)


def format_fields(cls: type, width: int = 100) -> str:
    """The fields of `cls` as --help shows them: `path  type = default`, its help indented below."""
    lines = []
    for described in describe_fields(cls):
        lines.append(f"  {described.path}  {described.type} = {described.default}")
        if described.help:
            lines.extend(
                textwrap.wrap(described.help, width, initial_indent=INDENT, subsequent_indent=INDENT)
            )
    return "\n".join(lines)


def _list_item(hint: Any) -> Any:
    if typing.get_origin(hint) is list and typing.get_args(hint):
        return typing.get_args(hint)[0]
    return None


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return re.sub(r"\b(typing|builtins|[\w.]+\.)(?=[A-Z]\w*\b)", "", str(hint)).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "(required)"


def _source_help(cls: type) -> dict[str, str]:
    """Field name -> the comment block right above it in the class body, else its docstring entry."""
    found = _docstring_help(inspect.getdoc(cls) or "")
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return found
    lines = source.splitlines()
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comments = []
            row = node.lineno - 2
            # A `# --- section ---` rule heads a group of fields: it is no field's help.
            while row >= 0 and lines[row].strip().startswith("#") and "---" not in lines[row]:
                comments.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            if comments:
                found[node.target.id] = " ".join(comments)
    return found


def _docstring_help(doc: str) -> dict[str, str]:
    """`name: text` entries of a docstring, with their more-indented continuation lines."""
    found: dict[str, str] = {}
    name, indent = "", 0
    for line in doc.splitlines():
        entry = re.match(r"^(\s*)(\w+): (.*)$", line)
        depth = len(line) - len(line.lstrip())
        if entry:
            name, indent = entry[2], len(entry[1])
            found[name] = entry[3].strip()
        elif name and line.strip() and depth > indent:
            found[name] += " " + line.strip()
        else:
            name = ""
    return found
