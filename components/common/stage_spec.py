"""One declaration per stage interface: its KFP component, the pipeline's parameters and the run check's
inputs are all made from it.

A stage's `StageSpec` (in components/<stage>/component.py) names its image, its Config, the artifacts it
consumes and produces (each filling a Config field with its local path) and the task inputs that are no
exposed Config field: pipeline parameters of its own (the training job's size), values the pipeline wires
(the run id, a shard index) and the parameters the pipeline places its pod with. The Config's
`exposed(...)` fields are its other inputs, so exposing a field is all it takes to add a parameter.

Every task input is named as the pipeline parameter that feeds it (`train_lora_r`): one spelling from
the run's parameters into the task; the Config field's dotted path (`lora.r`) is the other, in the stage
YAML and `<prefix>_overrides`.

`component(spec)` writes the lightweight component's function as source text: kfp.local's
SubprocessRunner runs only lightweight Python components, and KFP embeds the function's source in the
compiled task, which it reads with inspect.getsource; linecache serves the generated text to it.
"""

from __future__ import annotations

import dataclasses
import inspect
import linecache
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.common.config import ExposedField, exposed_fields, set_dotted

REQUIRED = inspect.Parameter.empty
KFP_TYPES = (bool, int, float, str, list, dict)


@dataclass(frozen=True)
class Artifact:
    """A KFP artifact the task consumes or produces; `field` is the Config field that receives its local
    path ("": none, as for metrics the task logs)."""

    name: str
    kind: str  # the kfp.dsl artifact class: Model, Dataset, Artifact, Metrics, HTML
    field: str = ""


@dataclass(frozen=True)
class Parameter:
    """A task input or a pipeline parameter."""

    name: str
    type: type
    default: Any = REQUIRED
    help: str = ""
    field: str = ""  # the dotted Config field it sets ("": none, the task reads it itself)
    none_as: Any = None  # the value that stands for the field's None (KFP parameters cannot be None)
    fetch: bool = False  # a model source the task fetches through the store's cache; its folder sets `field`

    def field_value(self, value: Any) -> Any:
        return None if self.none_as is not None and value == self.none_as else value


def from_exposed(config: type, exposed: ExposedField) -> Parameter:
    """The pipeline parameter of an exposed Config field: its type, its default (the field's, with None
    spelled `none_as`; for a required field the parameter's own) and its help."""
    if exposed.default is dataclasses.MISSING:
        default = exposed.pipeline_default
    else:
        default = exposed.parameter_value(exposed.default)
    hint = field_hint(config, exposed.path)
    return Parameter(exposed.parameter, kfp_type(hint), default, exposed.help, exposed.path, exposed.none_as)


def field_hint(config: type, path: str) -> Any:
    """The type hint of the dotted field `path` of dataclass `config`."""
    for part in path.split("."):
        hint = typing.get_type_hints(config)[part]
        config = hint
    return hint


def kfp_type(hint: Any) -> type:
    """The KFP parameter type of a Config field's type hint: `int | None` is int, a Literal of strings
    str, list[str] list."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in args if arg is not type(None)]
        return kfp_type(inner)
    if origin is typing.Literal:
        return type(args[0])
    if origin in (list, tuple) or hint in (list, tuple):
        return list
    if origin is dict or hint is dict:
        return dict
    if hint in KFP_TYPES:
        return hint
    raise TypeError(f"{hint} has no KFP parameter type")


@dataclass(frozen=True)
class StageSpec:
    """One stage's interface to the pipeline."""

    stage: str  # its package under components/
    prefix: str  # of its pipeline parameters and its `<prefix>_overrides`
    component: str  # the KFP component's name
    image: str  # the stage image it runs in (components/common/images.py)
    summary: str  # the component's docstring
    config: type
    run: Callable[[Task], Any]  # the task: builds the Config through Task.run, records its outputs
    consumes: tuple[Artifact, ...] = ()
    produces: tuple[Artifact, ...] = ()
    parameters: tuple[Parameter, ...] = ()  # fed by the pipeline parameter of the same name
    wired: tuple[Parameter, ...] = ()  # values the pipeline wires itself (run id, shard index)
    placement: tuple[Parameter, ...] = ()  # pipeline parameters that place the pod, not task inputs
    overrides_help: str = ""  # with it, `<prefix>_overrides` sets any other Config field
    returns: type | None = None
    exposes: bool = True  # False: the Config's exposed fields are another stage's parameters, not its own
    switch: str = ""  # a task parameter whose empty value leaves the stage out of the run ("": always in)
    attribute: str = "SPEC"  # its name in components/<stage>/component.py, which the task's body imports

    @property
    def overrides(self) -> str:
        return f"{self.prefix}_overrides"

    def task_parameters(self) -> list[Parameter]:
        """The task inputs fed by pipeline parameters: the exposed Config fields, the spec's own, and the
        overrides."""
        found = []
        if self.exposes:
            found = [from_exposed(self.config, exposed) for exposed in exposed_fields(self.config)]
        found += self.parameters
        if self.overrides_help:
            found.append(Parameter(self.overrides, dict, {}, self.overrides_help))
        return found

    def pipeline_parameters(self) -> list[Parameter]:
        return self.task_parameters() + list(self.placement)

    def inputs(self) -> list[Parameter]:
        """The task's parameter inputs."""
        return list(self.wired) + self.task_parameters()

    def runs(self, values: Mapping[str, Any]) -> bool:
        """Whether the run's parameters `values` ask for this stage."""
        return not self.switch or bool(values.get(self.switch))

    def run_task(self, values: dict[str, Any]) -> Any:
        """What the component's body calls with its inputs."""
        return self.run(Task(self, values))


def config_fields(spec: StageSpec, values: Mapping[str, Any], paths: Mapping[str, str]) -> dict[str, Any]:
    """The Config fields `values` (task inputs by name; absent ones are left to the Config) set, with
    `paths[name]` the local folder of artifact or fetched input `name`."""
    fields: dict[str, Any] = {}
    for artifact in spec.consumes + spec.produces:
        if artifact.field:
            set_dotted(fields, artifact.field, paths[artifact.name])
    for parameter in spec.inputs():
        if not parameter.field or parameter.name not in values:
            continue
        if parameter.fetch:
            if values[parameter.name]:
                set_dotted(fields, parameter.field, paths[parameter.name])
        else:
            set_dotted(fields, parameter.field, parameter.field_value(values[parameter.name]))
    return fields


@dataclass
class Task:
    """A running task: its spec and its inputs (artifacts as KFP objects with `.path`, `.uri`, ...)."""

    spec: StageSpec
    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def run(self, function: Callable[[Any], Any]) -> Any:
        """`function(Config)`, the Config built from the inputs and the stage's overrides; an error the
        user can fix ends the task with one line (components/common/entry.py)."""
        from components.common.entry import one_line_errors, run_stage

        with one_line_errors():
            paths = {**self._artifact_paths(), **self._fetch_sources()}
        fields = config_fields(self.spec, self.values, paths)
        overrides = self.values.get(self.spec.overrides) or {}
        return run_stage(function, self.spec.config, fields, overrides, parameters=self.spec.prefix)

    def _artifact_paths(self) -> dict[str, str]:
        return {
            artifact.name: self[artifact.name].path for artifact in self.spec.consumes + self.spec.produces
        }

    def _fetch_sources(self) -> dict[str, str]:
        from components.common.model_download import fetch_model

        folders = {}
        for parameter in self.spec.inputs():
            if parameter.fetch and self[parameter.name]:
                folders[parameter.name] = tempfile.mkdtemp(prefix=f"{parameter.name}-")
                fetch_model(self[parameter.name], folders[parameter.name], self.values.get("store_uri", ""))
        return folders


def function_source(
    name: str,
    summary: str,
    parameters: list[Parameter],
    body: str,
    consumes: tuple[Artifact, ...] = (),
    produces: tuple[Artifact, ...] = (),
    returns: type | None = None,
) -> str:
    """A component function's source: artifacts and required parameters first, then the defaulted ones;
    the docstring's Args become the inputs' descriptions in the compiled pipeline."""
    required = [p for p in parameters if p.default is REQUIRED]
    defaulted = [p for p in parameters if p.default is not REQUIRED]
    arguments = [f"{a.name}: dsl.Input[dsl.{a.kind}]" for a in consumes]
    arguments += [f"{p.name}: {p.type.__name__}" for p in required]
    arguments += [f"{a.name}: dsl.Output[dsl.{a.kind}]" for a in produces]
    arguments += [f"{p.name}: {p.type.__name__} = {p.default!r}" for p in defaulted]
    described = [f"        {p.name}: {p.help}" for p in parameters if p.help]
    doc = summary + ("\n\n    Args:\n" + "\n".join(described) if described else "")
    if '"""' in doc or "\\" in doc:
        raise ValueError(f"{name}: a help text holds a backslash or triple quotes")
    result = f" -> {returns.__name__}" if returns else ""
    signature = ",\n    ".join(arguments)
    return f'def {name}(\n    {signature},\n){result}:\n    """{doc}\n    """\n{body}'


def generated_function(name: str, source: str) -> Callable[..., Any]:
    """Define the function `source` holds, where inspect.getsource (and so KFP) can read it back."""
    filename = f"<generated component {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    from kfp import dsl

    namespace: dict[str, Any] = {"dsl": dsl}
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)
    return namespace[name]


def component(spec: StageSpec):
    """The stage's KFP component: its inputs from the spec, its body `spec.run_task` on them."""
    from kfp import dsl

    from components.common.images import image_for

    body = (
        "    inputs = dict(locals())\n"
        f"    from components.{spec.stage}.component import {spec.attribute}\n\n"
        f"    return {spec.attribute}.run_task(inputs)\n"
    )
    source = function_source(
        spec.component, spec.summary, spec.inputs(), body, spec.consumes, spec.produces, spec.returns
    )
    function = generated_function(spec.component, source)
    return dsl.component(base_image=image_for(spec.image), install_kfp_package=False)(function)


# Task inputs several stages share.
STORE_URI = Parameter(
    "store_uri",
    str,
    "s3://distill",
    "artifact store for caches, teacher shards, checkpoints and TensorBoard logs (s3://bucket/prefix).",
    field="store_uri",
)
RUN_ID = Parameter(
    "run_id", str, help="run-scoped prefix in the store; a retried task resumes from it.", field="run_id"
)
SERVED_TEACHER = Parameter(
    "teacher_server_address",
    str,
    "",
    "the run's served teacher (start_teacher_server's output), which the stage asks; empty: none.",
)
