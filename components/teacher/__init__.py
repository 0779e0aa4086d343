"""Teacher-data stage: read prompts in any supported format, ask a teacher, write distillation records.

    python -m components.teacher --config teacher.yaml [--set provider.name=deepseek ...]

Entry points (no KFP import; component.py maps KFP inputs to these):

    run(config) -> Result                   the whole stage in one process (one shard, then finalize)
    run_shard(config, shard_index, num_shards) -> Result
        asks the teacher for one shard's prompts; for `shards > 1` the pipeline runs one task per index
        inside dsl.ParallelFor(range(num_shards)), all with the same config (same run_id and store_uri),
        each resuming on its own; the provider's rpm/tpm limits are divided between the shards.
    finalize(config) -> Result
        after the ParallelFor: merges every shard's answers from the store, applies answer filters and the
        judge's verdicts, splits train/test, and writes output_dir (train.jsonl, test.jsonl,
        rejected.jsonl, summary.json, and logprobs.parquet when asked for).

`Result.metrics` is a flat dict name -> float for KFP Metrics (records, train, test, requests, cached,
prompt_tokens, completion_tokens, cost, total_cost, ...).

Module map: config.py (fields), readers.py and chunking.py (sources), templates/ (replaceable prompt
files), local.py
(Hugging Face teacher, vLLM when installed), worker_pool.py (asking many prompts at once, retries, answer policies),
batch.py (mode: batch, the provider's Batch API), money.py (the budget: reserve, settle, refund, totals),
limits.py (rpm/tpm, each shard's part of the budget),
journal.py (shards, resume, cache), judge.py, quality.py (dedup, filters, split), plan.py (what to ask),
progress.py (bar, log lines), stage.py (run, run_shard, finalize, Result), finalize.py (merge and write
the dataset), component.py (its StageSpec). The provider config, named providers
(teacher_config.yaml), approved key hosts and the OpenAI-compatible client, which the judges share, are in
components/common/ (provider_config.py, providers.py, approved_hosts.py, openai_api.py).

Importing the package loads its Config only (no torch, no clients): `run` and `Result` live in stage.py,
so the pipeline's run check reads every stage's Config in one small image.
"""

from components.teacher.config import Config, JudgeConfig, ProviderConfig, TextConfig

__all__ = ["Config", "JudgeConfig", "ProviderConfig", "TextConfig"]
