"""Each train module's share of the Config: the one place, besides the trainer that runs them, that reads
a whole train Config, so that every module receives only the settings it uses.

    distribution(config)      launch.py: devices, precision, ZeRO, accumulation, clipping
    model_loading(config)     modeling.py: attention kernel, remote code, checkpointing, compile
    phase_defaults(config)    curriculum.py: what a phase inherits from the run
    heldout_settings(config)  phase_eval.py: held-out scoring and samples, where the bests go
"""

from __future__ import annotations

from components.train.config import Config
from components.train.curriculum import PhaseDefaults
from components.train.launch import Distribution
from components.train.modeling import ModelLoading, attention_kwargs
from components.train.phase_eval import HeldoutSettings


def distribution(config: Config) -> Distribution:
    return Distribution(
        precision=config.precision,
        deepspeed=config.deepspeed,
        batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_grad_norm=config.max_grad_norm,
        find_unused_parameters=config.intermediate.enabled,
    )


def model_loading(config: Config) -> ModelLoading:
    return ModelLoading(
        attention=attention_kwargs(
            config.attention, config.batching, attention_maps=config.intermediate.attention_weight > 0
        ),
        trust_remote_code=config.trust_remote_code,
        gradient_checkpointing=config.gradient_checkpointing,
        compile=config.compile,
    )


def phase_defaults(config: Config) -> PhaseDefaults:
    intermediate = config.intermediate
    return PhaseDefaults(
        max_steps=config.max_steps,
        num_epochs=config.num_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        kd_alpha=config.kd.alpha,
        weights={
            "hidden": intermediate.hidden_weight,
            "attention": intermediate.attention_weight,
            "contrastive": intermediate.contrastive_weight,
        },
        on_policy_fraction=config.kd.on_policy.fraction,
        seed=config.seed,
    )


def heldout_settings(config: Config) -> HeldoutSettings:
    return HeldoutSettings(
        output_dir=config.output_dir,
        eval_samples=config.eval_samples,
        sample_count=config.sample_count,
        sample_max_new_tokens=config.sample_max_new_tokens,
        batching=config.batching,
        max_length=config.max_length,
        checkpoints=bool(config.save_steps),
    )
