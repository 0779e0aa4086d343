"""Typed configs: dataclasses built from YAML or dicts, checked field by field when loaded.

Every stage has a `Config` dataclass. `from_dict(Config, data)` builds it, converting nested dicts
into nested dataclasses and rejecting unknown fields and wrong types with the field's full path:

    train.lora.r: expected int, got 'sixteen'
    train.lr_scheduler: 'cosin' is not one of 'cosine', 'linear', 'constant'

Cross-field rules live in each dataclass's `__post_init__` and raise `ConfigError`.

A field the pipeline exposes as a parameter declares its help text and the parameter's name once, on
the field: `field(default=16, metadata=exposed("train_lora_r", "LoRA rank."))`. That is all it takes: the
stage's component, the pipeline's parameter (its default and description) and the run check are made
from it (components/common/stage_spec.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from components.common.errors import ConfigError
from components.common.plain_yaml import load_plain_yaml

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path, overrides: Mapping[str, Any] | None = None) -> T:
    """Read a YAML file into `cls`; `overrides` (possibly nested) replace values from the file."""
    path = Path(path)
    try:
        data = load_plain_yaml(path.read_text(), f"config file {path}") or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field names to values")
    return from_dict(cls, deep_merge(data, overrides or {}))


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; nested mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(data: dict[str, Any], path: str, value: Any) -> None:
    """data["kd"]["teacher_dir"] = value for path "kd.teacher_dir", making the mappings on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`, validating names and types; `where` prefixes error paths."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_join(where, unknown[0])}: unknown field{did_you_mean(unknown[0], fields)}; "
            f"valid fields are {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, _join(where, name))
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])}: required field is missing")
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(under(where, str(error))) from None


def did_you_mean(name: str, choices: typing.Iterable[str]) -> str:
    """` (did you mean 'num_epochs'?)` for the closest of `choices` to a mistyped `name`, or ""."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def under(where: str, message: str) -> str:
    """A message about a field of the section at `where`, with the field's full dotted path:
    ("train", "lora.r: ...") -> "train.lora.r: ..."; a section that names itself ("lora", "lora.r: ...")
    is not named twice; a message that names no field is prefixed with `where: `."""
    if not where:
        return message
    path = re.match(r"[\w.\[\]]+(?=: )", message)
    if path is None:
        return f"{where}: {message}"
    parent, _, last = where.rpartition(".")
    if path.group().split(".")[0] == last:
        return _join(parent, message)
    return _join(where, message)


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-data form of a config (for logging, YAML, KFP parameters)."""
    return dataclasses.asdict(config)


def exposed(parameter: str, help: str, none_as: Any = None, pipeline_default: Any = None) -> dict[str, Any]:
    """Field metadata: the field is the pipeline parameter `parameter`, described by `help`. KFP
    parameters cannot be None: `none_as` is the parameter value that stands for None ("" or 0). A
    required field has no default to give the parameter: `pipeline_default` is the parameter's."""
    return {"parameter": parameter, "help": help, "none_as": none_as, "pipeline_default": pipeline_default}


@dataclasses.dataclass(frozen=True)
class ExposedField:
    """A Config field that is also a pipeline parameter."""

    parameter: str
    path: str  # dotted, as in the stage YAML and `<stage>_overrides`: lora.r
    default: Any
    help: str
    none_as: Any = None
    pipeline_default: Any = None

    def parameter_value(self, field_value: Any) -> Any:
        """The parameter's value for the field's."""
        return self.none_as if field_value is None else field_value


def exposed_fields(cls: type) -> list[ExposedField]:
    """The fields of `cls` (nested dataclasses included) marked with `exposed`, in declaration order."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "parameter" in f.metadata:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            metadata = f.metadata
            found.append(
                ExposedField(
                    metadata["parameter"],
                    f.name,
                    default,
                    metadata["help"],
                    metadata["none_as"],
                    metadata["pipeline_default"],
                )
            )
        elif dataclasses.is_dataclass(hints[f.name]):
            for inner in exposed_fields(hints[f.name]):
                found.append(dataclasses.replace(inner, path=f"{f.name}.{inner.path}"))
    return found


def pipeline_only(why: str) -> dict[str, Any]:
    """Field metadata: in a pipeline run the field is the pipeline's (an artifact's location, an
    administrator's choice), never a run's `<stage>_overrides`; `why` says whose it is."""
    return {"pipeline_only": why}


def pipeline_only_fields(cls: type) -> list[tuple[str, str]]:
    """(dotted path, why) of the fields of `cls` (nested dataclasses included) marked `pipeline_only`."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "pipeline_only" in f.metadata:
            found.append((f.name, f.metadata["pipeline_only"]))
        elif dataclasses.is_dataclass(hints[f.name]):
            found += [(f"{f.name}.{path}", why) for path, why in pipeline_only_fields(hints[f.name])]
    return found


def _dotted_in(data: Mapping[str, Any], path: str) -> bool:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def refuse_exposed_overrides(cls: type, stage_prefix: str, overrides: Mapping[str, Any]) -> None:
    """A field the pipeline exposes is set by its parameter only: the same field in the stage's
    overrides would silently win over the parameter, so it is refused, naming both spellings. A field
    marked `pipeline_only` is refused in the overrides too: a run does not choose it."""
    for path, why in pipeline_only_fields(cls):
        if _dotted_in(overrides, path):
            raise ConfigError(f"{stage_prefix}_overrides.{path}: not a run's to set; it is {why}")
    for exposed_field in exposed_fields(cls):
        value: Any = overrides
        for part in exposed_field.path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                break
            value = value[part]
        else:
            raise ConfigError(
                f"{exposed_field.parameter} and {stage_prefix}_overrides.{exposed_field.path} both set; "
                f"give it once, as {exposed_field.parameter}"
            )


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches no allowed type")
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {value!r} is not one of {allowed}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        converted = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return converted if origin is list else tuple(converted)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        value_type = args[1] if args else Any
        return {k: _convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        # KFP passes dict and list parameters (`*_overrides`) as protobuf Structs, whose numbers are all
        # doubles: 20 arrives as 20.0. A whole double is that integer; 20.5 is still refused.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
