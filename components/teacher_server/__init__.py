"""A teacher served for one run: a KServe InferenceService (the Hugging Face runtime's vLLM backend) made
before the teacher stage and deleted when the run ends, failed or not (the pipeline's exit handler).

    served = run(config)          # create it, wait until Ready: served.base_url, served.scoring_url
    remove(config, api)           # delete it; one already gone is fine

The teacher stage reaches it as provider vllm at `base_url` (OpenAI-compatible, /openai/v1 on KServe's
server) and KD scoring as kd.teacher_url at `scoring_url` (the scorer adds /v1/completions).
"""

from components.teacher_server.config import Config

__all__ = ["Config"]
