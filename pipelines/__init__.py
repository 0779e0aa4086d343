"""The distillation pipeline: DAG, compile, local runner, demo teacher, submitter."""
