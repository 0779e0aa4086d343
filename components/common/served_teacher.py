"""Where the run's served teacher (components/teacher_server/) answers, for the stages that ask it: the
teacher stage (provider vllm) and KD scoring (kd.teacher_url)."""

import re

from components.common.config import deep_merge


def server_name(run_id: str) -> str:
    """'teacher-' and the run id as a DNS label, within the 63 characters of a Service name."""
    tail = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    return f"teacher-{tail}"[:45].rstrip("-")  # KServe adds '-predictor-...' to make its Services


def base_url(address: str) -> str:
    """The served teacher's root for the teacher stage's provider vllm (OpenAI-compatible)."""
    return f"{address}/openai/v1"


def scoring_url(address: str) -> str:
    """The served teacher's root for kd.teacher_url: the scorer posts to <url>/v1/completions."""
    return f"{address}/openai"


def teacher_inputs(address: str, run_id: str) -> dict[str, str]:
    """The teacher stage's inputs that point it at the served teacher at `address`."""
    return {
        "teacher_provider": "vllm",
        "teacher_base_url": base_url(address),
        "teacher_model": server_name(run_id),
    }


def train_overrides(address: str, scores: bool, overrides: dict) -> dict:
    """train_overrides with kd.teacher_url at the served teacher when the KD kind asks a teacher to score
    (`scores`); a kd.teacher_url the run gives itself wins, and kd.teacher_dir (train_kd_teacher_source)
    still gives the teacher's tokenizer."""
    if not scores:
        return overrides
    return deep_merge({"kd": {"teacher_url": scoring_url(address)}}, overrides)
