"""The pipeline's first task: the run check (pipelines/run_check.py) on the parameters the run was started
with, in the small teacher image, before any stage starts.

Its inputs are the pipeline's parameters, one by one, made from the stages' specs; a single mapping of them
would reach kfp.local's runner as JSON text it cannot quote.
"""

import dataclasses

from kfp import dsl

from components.common.images import image_for
from components.common.stage_spec import REQUIRED, function_source, generated_function
from pipelines.run_check import pipeline_parameters

BODY = """\
    parameters = dict(locals())
    from components.common.entry import one_line_errors
    from pipelines.run_check import check_run_inputs

    with one_line_errors():
        check_run_inputs(parameters)
"""


def check_component():
    """The check task's component: every pipeline parameter a required input."""
    inputs = [dataclasses.replace(p, default=REQUIRED, help="") for p in pipeline_parameters()]
    summary = "Check the run's parameters with every stage's Config before any stage starts."
    function = generated_function("check_run", function_source("check_run", summary, inputs, BODY))
    return dsl.component(base_image=image_for("teacher"), install_kfp_package=False)(function)


check_run = check_component()
