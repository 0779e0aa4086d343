"""YAML from run files, stage configs, `--set` values and task files: plain data without aliases.

An alias (`*name`) repeats an anchored node by reference, so a few hundred bytes of nested aliases expand
into gigabytes once a consumer walks them (the "billion laughs"). None of the project's files needs one,
so the loader refuses the first alias it meets, naming the file and line:

    load_plain_yaml(text, "run.yaml")  ->  ConfigError("run.yaml: line 3 uses the YAML alias *a; ...")

Anything else is yaml.safe_load (no tags that build objects), except that a number in any float spelling
is a float, as in YAML 1.2: yaml.safe_load reads `5e-5` (no dot) as the string "5e-5".
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from components.common.errors import ConfigError


class _NoAliasLoader(yaml.SafeLoader):
    def __init__(self, stream, where: str):
        super().__init__(stream)
        self.where = where

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{self.where}: line {event.start_mark.line + 1} uses the YAML alias *{event.anchor}; "
                "aliases are refused (a few of them can expand to gigabytes): write the value out"
            )
        return super().compose_node(parent, index)


# YAML 1.2's float spellings that YAML 1.1 misses: an exponent without a dot (5e-5, 1E+3).
_NoAliasLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_plain_yaml(text: str, where: str) -> Any:
    """`text` parsed like yaml.safe_load, refusing aliases with a ConfigError that names `where`."""
    loader = _NoAliasLoader(text, where)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
