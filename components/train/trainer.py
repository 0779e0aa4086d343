"""The train recipe: setup, then each curriculum phase's loop of loss steps, then save.

    python -m components.train --config train.yaml
    accelerate launch --num_processes 4 -m components.train --config train.yaml   (what launcher does)

Feature -> flag:
    SFT on teacher answers, assistant tokens only      (always)         data.py
    chain of thought in or out of the loss             reasoning        data.py
    padding-free rows, varlen flash attention          batching         batching.py, varlen.py
    fused chunked CE/KD loss, no full logits           kd.chunk_size    losses.py
    logit KD from a local teacher (KL, RKL, JSD)       kd.kind=logits   losses.py
    sparse top-k KD from stored teacher logprobs       kd.kind=topk     sparse_kd.py
    teacher with another tokenizer (byte-span aligned) (automatic)      cross_tokenizer.py
    on-policy KD on the student's own samples          kd.kind=on_policy on_policy.py
    on-policy samples from vLLM on a GPU (method full) kd.on_policy.engine vllm_sampling.py
    teacher scoring over HTTP (vLLM prompt_logprobs)   kd.teacher_url   teacher_scoring.py
    hidden-state / attention / contrastive terms       intermediate.*   intermediate.py
    multi-phase curriculum, ramped mixes               curriculum       curriculum.py
    held-out loss, best weights per phase, samples     eval_steps       phase_eval.py
    LoRA / rsLoRA / DoRA / QLoRA / full                method, lora.*   modeling.py
    DeepSpeed ZeRO 0/2/3 (+offload)                    deepspeed        launch.py, deepspeed/*.json
    every GPU of the pod (torchrun / accelerate)       launcher         launch.py
    checkpoints in the store, resume                   save_steps       checkpoint.py
    TensorBoard synced live, report_to trackers        report_to        tracking.py
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from components.common.chat_template import ensure_chat_template
from components.common.config import to_dict
from components.common.devices import note_slow_on_cpu
from components.common.errors import InputError
from components.common.logprobs_file import stream_logprobs
from components.common.records import read_records
from components.common.remote_code import allows_remote_code
from components.common.store import open_store
from components.train.batching import Batch, collate
from components.train.checkpoint import (
    BestStore,
    CheckpointStore,
    TrainingState,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from components.train.cross_tokenizer import AlignmentCounts
from components.train.curriculum import PhasePlan, plan_phases, source_folder
from components.train.data import Encoder, encode_records
from components.train.intermediate import IntermediateLoss
from components.train.launch import accelerator_for
from components.train.losses import Divergence
from components.train.modeling import base_model, check_vocab, load_student, load_teacher, resolve_precision
from components.train.objective import DistillObjective, teacher_outputs
from components.train.on_policy import ce_targets, draw, sample, with_samples
from components.train.phase_eval import PhaseEvaluator
from components.train.progress import Progress
from components.train.settings import distribution, heldout_settings, model_loading, phase_defaults
from components.train.sparse_kd import (
    answer_ids,
    answer_text,
    attach_topk,
    report,
    scored_targets,
    sparse_targets,
    warn_if_sampled_only,
)
from components.train.teacher_scoring import HttpScorer, LocalScorer
from components.train.topk_store import TopKStore
from components.train.tracking import Trackers, check_report_to
from components.train.vllm_sampling import VllmSampler, sampling_engine, vllm_installed

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def fused_loss_allowed(deepspeed: str, student) -> bool:
    """The fused loss keeps the head's weight gradient from the forward pass until the backward pass;
    ZeRO-3 re-partitions that weight in between, so a trainable head under ZeRO-3 needs the recompute."""
    head = base_model(student).get_output_embeddings()
    head_trains = any(p.requires_grad for p in head.parameters())
    return not (deepspeed.startswith("zero3") and head_trains)


def to_floats(values: dict) -> dict[str, float]:
    """The window's statistics as numbers, with one device-to-host copy for all its tensors (a float()
    per tensor would wait for the GPU once each)."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    numbers = torch.stack([values[k].float() for k in keys]).tolist() if keys else []
    return {**values, **dict(zip(keys, numbers, strict=True))}


class DistillTrainer:
    """One run of the recipe: `setup()`, then `train()` (every phase), then `save(result)`."""

    def __init__(self, config):
        self.config = config

    # --- setup ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import AutoTokenizer

        config = self.config
        check_report_to(config.report_to)
        seed_everything(config.seed)
        self.accelerator = accelerator_for(distribution(config))
        self.device = self.accelerator.device
        self.precision = resolve_precision(config.precision, self.device)
        if self.precision == "bf16":
            note_slow_on_cpu("precision: bf16", self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(
            config.student_dir,
            trust_remote_code=allows_remote_code(config.student_dir, config.trust_remote_code),
        )
        ensure_chat_template(self.tokenizer, config.student_dir, config.chat_template, "chat_template")
        self.sources, heldout = self._load_sources()
        self.teacher = None
        # A teacher that scores text in its own tokens (another tokenizer, or a server): sparse targets.
        self.scorer: LocalScorer | HttpScorer | None = None
        self.same_tokens = True
        divergence = Divergence(config.kd.divergence, config.kd.beta, config.kd.temperature)
        intermediate = None
        wants_teacher = config.kd.teacher_dir and (
            config.kd.needs_scoring_teacher or config.intermediate.enabled
        )
        if wants_teacher:
            # Compared before any model is loaded: a refusal costs no GPU time.
            teacher_tokenizer = AutoTokenizer.from_pretrained(
                config.kd.teacher_dir,
                trust_remote_code=allows_remote_code(config.kd.teacher_dir, config.trust_remote_code),
            )
            self.same_tokens = teacher_tokenizer.get_vocab() == self.tokenizer.get_vocab()
            same_tokens = self.same_tokens
            if not same_tokens and config.intermediate.enabled:
                raise InputError(
                    "kd.teacher_dir: the teacher's tokenizer differs from the student's, so their positions "
                    "do not correspond and intermediate-layer terms cannot compare them; set the "
                    "intermediate weights to 0 (logit KD works across tokenizers)"
                )
        # Decided before any model is loaded: an engine that cannot run costs no GPU time.
        sampling = config.kd.kind == "on_policy" and sampling_engine(
            config.kd.on_policy.engine, self.device, config.method, vllm_installed()
        )
        loading = model_loading(config)
        self.student = load_student(
            config.student_dir,
            config.method,
            config.lora,
            loading,
            self.device,
            self.precision,
            init_checkpoint=config.init_checkpoint,
        )
        self.sampler = sample
        if sampling == "vllm":
            self.sampler = VllmSampler(config.student_dir, next(self.student.parameters()).dtype)
        if wants_teacher:
            if config.kd.teacher_url:
                kd = config.kd
                self.scorer = HttpScorer(
                    kd.teacher_url,
                    kd.teacher_model,
                    teacher_tokenizer,
                    kd.top_k,
                    kd.teacher_timeout_s,
                    kd.teacher_batch_size,
                    kd.teacher_concurrency,
                    kd.teacher_retries,
                )
            else:
                self.teacher = load_teacher(config.kd, loading, self.device, self.precision)
                if same_tokens:
                    limit = check_vocab(self.tokenizer, self.student, teacher_tokenizer, self.teacher)
                    divergence = Divergence(divergence.kind, divergence.beta, divergence.temperature, limit)
                elif config.kd.needs_scoring_teacher:
                    log.info("the teacher's tokenizer differs from the student's: KD by byte-span alignment")
                    self.scorer = LocalScorer(self.teacher, teacher_tokenizer, config.kd.top_k)
            if config.intermediate.enabled:
                intermediate = IntermediateLoss(config.intermediate, self.student.config, self.teacher.config)
        self.objective = DistillObjective(
            self.student,
            divergence,
            config.kd.chunk_size,
            intermediate,
            logit_kd=config.kd.needs_scoring_teacher and self.scorer is None,
            fused_loss=fused_loss_allowed(config.deepspeed, self.student),
        )
        self.objective.to(self.device)
        self.phase_index = self.phase_step = self.global_step = 0
        self.phases = plan_phases(
            phase_defaults(config),
            config.curriculum,
            config.start_phase,
            config.end_phase,
            self.sources,
            divergence,
        )
        store = (
            open_store(config.store_uri).child(f"runs/{config.run_id}/train") if config.store_uri else None
        )
        run = run_fingerprint(config) if store else None
        self.checkpoints = (
            CheckpointStore(store.child("checkpoints"), config.save_total_limit, run) if store else None
        )
        self.evaluator = (
            PhaseEvaluator(
                heldout_settings(config),
                self.tokenizer,
                heldout,
                self.device,
                self.accelerator.is_main_process,
                BestStore(store.child("best"), run) if store else None,
            )
            if config.eval_steps
            else None
        )
        self.tb_store = store.child("tensorboard") if store else None

    def _load_sources(self) -> tuple[dict, dict]:
        """(training examples, held-out examples when eval_steps is set) of every source by name."""
        config = self.config
        encoder = Encoder(
            self.tokenizer, config.max_length, config.truncation, config.reasoning, config.assistant_turns
        )
        self._scratch = tempfile.TemporaryDirectory(prefix="train-sources-")
        folders = {
            name: source_folder(location, Path(self._scratch.name))
            for name, location in {"main": config.data_dir, **config.datasets}.items()
        }
        sources, heldout = {}, {}
        # What each record's teacher is asked about when a teacher scores text: its prompt messages.
        self.prompts: dict[str, list[dict]] = {}
        self.alignment = AlignmentCounts()
        topk_store = TopKStore()
        for name, folder in folders.items():
            test = Path(folder) / "test.jsonl"
            if config.eval_steps and test.is_file() and test.stat().st_size:
                heldout[name] = encode_records(encoder, read_records(test), f"{name} held-out")
            path = Path(folder) / "train.jsonl"
            if not path.is_file():
                field_name = "data_dir" if name == "main" else f"datasets.{name}"
                raise InputError(
                    f"{field_name}: {path} does not exist; give the teacher dataset folder (it holds "
                    "train.jsonl and test.jsonl)"
                )
            records = read_records(path)
            sources[name] = encode_records(encoder, records, name)
            if config.kd.kind == "topk":
                stored = stream_logprobs(Path(folder))
                self.alignment.add(attach_topk(sources[name], records, self.tokenizer, stored, topk_store))
            self.prompts.update({record.id: record.prompt_messages for record in records})
        if config.kd.kind == "topk":
            warn_if_sampled_only(self.alignment)
        log.info("training records: %s", {name: len(examples) for name, examples in sources.items()})
        return sources, heldout

    def _build_optimizer(self):
        params = [p for p in self.objective.parameters() if p.requires_grad]
        # One optimizer for the whole run: each phase sets its own learning rate and schedule on it, so
        # DeepSpeed's engine (built around the optimizer) is created once. On a GPU the fused kernel
        # updates every tensor in a few launches instead of a dozen per parameter; ZeRO-Offload steps the
        # optimizer on CPU copies of the weights, where the plain implementation is the tested one.
        return torch.optim.AdamW(
            params,
            lr=self.phases[0].learning_rate,
            weight_decay=self.config.weight_decay,
            fused=self.device.type == "cuda" and "offload" not in self.config.deepspeed,
        )

    def _start_phase(self, phase: PhasePlan, total_steps: int) -> None:
        from transformers import get_scheduler

        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = phase.learning_rate
        if self.objective.intermediate is not None:
            self.objective.intermediate.weights = phase.weights
        self.objective.spec = phase.divergence
        name = {"constant": "constant_with_warmup"}.get(self.config.lr_scheduler, self.config.lr_scheduler)
        warmup = round(self.config.warmup_ratio * total_steps)
        self.scheduler = get_scheduler(
            name, self.optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
        )

    # --- the loss of one optimizer step ---------------------------------------------------------------
    def loss_step(self, phase: PhasePlan, micro_batches: list) -> dict[str, torch.Tensor | float]:
        """Forward/backward over one accumulation window, then the optimizer step; returns statistics.

        Nothing here waits for the GPU: token counts come from the CPU-side batches, and the loss
        statistics stay on the device (as tensors) until the trainer logs them.
        """
        config = self.config
        if config.kd.kind == "on_policy":
            micro_batches = [
                self._with_samples(batch, micro, phase.on_policy_fraction)
                for micro, batch in enumerate(micro_batches)
            ]
        accum = len(micro_batches)
        scored = max(1, sum(batch.num_scored for batch in micro_batches))
        kd_on = config.kd.kind != "none"
        weights = {
            "ce_weight": 1.0 - phase.kd_alpha if kd_on else 1.0,
            "kd_weight": phase.kd_alpha if kd_on else 0.0,
        }
        sums: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor | float] = {"scored": float(scored), "tokens": 0.0}
        for batch in micro_batches:
            with self.accelerator.accumulate(self.model):
                model_inputs, loss_inputs = batch.model_inputs(self.device), batch.loss_inputs(self.device)
                if config.kd.kind == "on_policy":
                    loss_inputs["targets"] = ce_targets(loss_inputs["targets"], batch.examples)
                teacher = sparse = None
                if config.kd.kind == "topk":
                    sparse = sparse_targets(batch, self.device)
                elif self.scorer is not None:
                    sparse = self._scored_targets(batch)
                elif self.teacher is not None:
                    teacher = teacher_outputs(
                        self.teacher,
                        model_inputs,
                        loss_inputs["scored_index"],
                        layers=config.intermediate.enabled,
                        attentions=config.intermediate.attention_weight > 0,
                    )
                terms = self.model(
                    **model_inputs,
                    **loss_inputs,
                    teacher=teacher,
                    sparse=sparse,
                    **weights,
                )
                # accelerate divides the loss by the window length; multiplying by it first makes the
                # window's loss the mean over all its scored tokens, whatever each micro-batch holds.
                loss = terms.pop("loss") * accum / scored
                # Intermediate terms are already means over the micro-batch (and weighted).
                loss = loss + sum(terms[k] for k in terms if k.endswith("_loss"))
                self.accelerator.backward(loss)
                for name, value in terms.items():
                    value = value.detach() / (accum if name.endswith("_loss") else 1)
                    sums[name] = sums[name] + value if name in sums else value
                stats["tokens"] += batch.num_tokens
                if self.accelerator.sync_gradients:
                    stats["grad_norm"] = self._clip()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        stats["ce"], stats["kd"] = sums.pop("ce_sum"), sums.pop("kd_sum")
        stats["mixed"] = weights["ce_weight"] * stats["ce"] + weights["kd_weight"] * stats["kd"]
        stats.update(sums)
        return stats

    def _with_samples(self, batch: Batch, micro: int, fraction: float) -> Batch:
        """The micro-batch with a share of its answers replaced by the student's samples (on_policy.py)."""
        config = self.config
        settings = config.kd.on_policy
        rng = draw(config.seed, self.global_step, micro, self.accelerator.process_index)
        examples = with_samples(
            self.student,
            batch.examples,
            fraction=fraction,
            rng=rng,
            pad_id=self.tokenizer.pad_token_id,
            eos_id=self.tokenizer.eos_token_id,
            temperature=settings.temperature,
            max_new_tokens=settings.max_new_tokens,
            sampler=self.sampler,
        )
        return collate(examples, self.tokenizer.pad_token_id, config.batching, config.max_length)

    def _scored_targets(self, batch: Batch):
        """Sparse targets from a teacher scoring the batch's text in its own tokens (cross_tokenizer.py)."""
        examples = batch.examples
        answer = answer_ids if self.same_tokens else answer_text
        entries = self.scorer.entries(
            [self.prompts[e.record_id] for e in examples], [answer(e, self.tokenizer) for e in examples]
        )
        targets, counts = scored_targets(examples, entries, self.tokenizer, self.device)
        self.alignment.add(counts)
        return targets

    def _clip(self) -> torch.Tensor | float:
        if self.config.max_grad_norm <= 0:
            return float("nan")
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        if isinstance(norm, torch.Tensor):
            return norm.detach()
        return float("nan") if norm is None else float(norm)

    # --- training -------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Every curriculum phase's steps (from the newest checkpoint, if any); returns the run's summary."""
        config = self.config
        acc = self.accelerator
        world, accum = acc.num_processes, config.gradient_accumulation_steps
        self.optimizer = self._build_optimizer()
        self.model, self.optimizer = acc.prepare(self.objective, self.optimizer)
        resume = self.checkpoints.latest() if self.checkpoints else None
        state = (
            load_checkpoint(acc, self.model, self.optimizer, self.checkpoints, resume)
            if resume is not None
            else None
        )
        if state is not None and self.evaluator:
            self.evaluator.resume(state.get("best", {}), [phase.name for phase in self.phases])
        trackers = None
        if acc.is_main_process:
            trackers = Trackers(
                config.tensorboard_dir,
                self.tb_store,
                config.report_to,
                config.run_id,
                to_dict(config),
                resume_step=resume or 0,
                sync_seconds=config.tensorboard_sync_seconds,
            )
        self.global_step = resume or 0
        # A retry that finds the run already complete reports the loss the checkpoint recorded.
        self.final_loss, self.loss_parts = (
            (state["final_loss"], state["loss_parts"]) if state else (float("nan"), {})
        )
        started = time.monotonic()
        tokens_total = 0.0
        for phase in self.phases:
            if state is not None and phase.index < state["phase"]:
                continue
            seed = config.seed + phase.index
            stream = phase.stream(phase.batch_size, seed, config.batching == "grouped", world * accum)
            total = phase.total_steps(stream.batches_per_epoch, world * accum)
            self._start_phase(phase, total)
            self.phase_index, phase_step = phase.index, 0
            if state is not None:
                # The checkpoint was taken inside this phase: continue its schedule where it stopped.
                phase_step = state["phase_step"]
                self.scheduler.load_state_dict(state["scheduler"])
                # Loading a schedule does not touch the optimizer: put its current rate back in place.
                for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
                    group["lr"] = lr
                state = None
            self.model.train()
            self.drawn: Counter = Counter()
            progress = Progress(phase.name, total, phase_step, acc.is_main_process)
            window: dict[str, float] = {}
            while phase_step < total:
                micro = []
                for m in range(accum):
                    index = (phase_step * accum + m) * world + acc.process_index
                    examples = stream.get(index)
                    self.drawn.update(example.source for example in examples)
                    micro.append(
                        collate(examples, self.tokenizer.pad_token_id, config.batching, config.max_length)
                    )
                stats = self.loss_step(phase, micro)
                phase_step += 1
                self.global_step += 1
                self.phase_step = phase_step
                tokens_total += stats["tokens"] * world
                for key, value in stats.items():
                    window[key] = value if key == "grad_norm" else window.get(key, 0.0) + value
                window["steps"] = window.get("steps", 0.0) + 1
                if phase_step % config.logging_steps == 0 or phase_step == total:
                    self.final_loss, self.loss_parts = self._log(
                        trackers, progress, window, phase, phase_step
                    )
                    window = {}
                if self.evaluator and (phase_step % config.eval_steps == 0 or phase_step == total):
                    # The unwrapped student, in the training's autocast: a bf16 base feeds fp32 adapters.
                    with acc.autocast():
                        self.evaluator.evaluate(
                            acc.unwrap_model(self.model).student,
                            phase,
                            phase_step,
                            self.global_step,
                            trackers,
                            self._save_weights,
                        )
                if self.checkpoints and config.save_steps and self.global_step % config.save_steps == 0:
                    save_checkpoint(
                        self.training_state(),
                        self.checkpoints,
                        sharded=config.deepspeed != "none",
                        bests=self.evaluator.stored if self.evaluator else None,
                    )
            progress.close()
        seconds = time.monotonic() - started
        if trackers is not None:
            trackers.close()
        if self.scorer is not None:
            report(self.alignment, "KD from a teacher with its own tokens")
        return {
            "method": config.method,
            "base_model": config.student_dir,
            "steps": self.global_step,
            "final_loss": self.final_loss,
            "final_loss_parts": self.loss_parts,
            "resumed_from": resume or 0,
            "tokens_per_second": tokens_total / seconds if seconds else 0.0,
            "train_seconds": seconds,
            "phases": [phase.name for phase in self.phases],
            "best": self.evaluator.best if self.evaluator else {},
            "kd": config.kd.kind,
            # How the teacher's tokens lined up with the student's (records are counted once per use).
            "kd_alignment": self.alignment.summary() if self.alignment.records else {},
            "precision": self.precision,
            "deepspeed": config.deepspeed,
        }

    def training_state(self) -> TrainingState:
        """What a checkpoint saves of this run as it stands."""
        return TrainingState(
            accelerator=self.accelerator,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=self.global_step,
            phase=self.phase_index,
            phase_step=self.phase_step,
            final_loss=self.final_loss,
            loss_parts=self.loss_parts,
            best=self.evaluator.best if self.evaluator else {},
        )

    def _log(self, trackers, progress, window, phase, phase_step) -> tuple[float, dict[str, float]]:
        window = to_floats(window)
        world = self.accelerator.num_processes
        if world > 1:
            # Every rank saw other records: the logged figures are over all of them.
            keys = sorted(k for k in window if k not in ("steps", "grad_norm"))
            local = torch.tensor([window[k] for k in keys], dtype=torch.float64, device=self.device)
            totals = self.accelerator.reduce(local, reduction="sum").tolist()
            window.update(
                {k: v / world if k.endswith("_loss") else v for k, v in zip(keys, totals, strict=True)}
            )
        steps, scored = window["steps"], max(1.0, window["scored"])
        scalars = {
            # Token-weighted over the window, like the gradient: sum of mixed token losses / scored tokens.
            "train/loss": window["mixed"] / scored
            + sum(v / steps for k, v in window.items() if k.endswith("_loss")),
            "train/ce": window["ce"] / scored,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": window.get("grad_norm", float("nan")),
            "train/tokens_per_second": progress.update(phase_step, window["tokens"]),
            "train/phase": float(phase.index),
        }
        if self.config.kd.kind != "none":
            scalars["train/kd"] = window["kd"] / scored
            scalars["train/kd_temperature"] = self.objective.spec.temperature
        # The share of each source in the window's records: a ramped mix shows its ramp here.
        drawn = sum(self.drawn.values()) or 1
        scalars.update({f"train/share_{name}": self.drawn[name] / drawn for name in phase.source_names})
        self.drawn.clear()
        scalars.update({f"train/{k}": v / steps for k, v in window.items() if k.endswith("_loss")})
        if torch.cuda.is_available():
            scalars["train/gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if trackers is not None:
            trackers.log(scalars, self.global_step)
        progress.log_line(phase_step, scalars)
        parts = {k[len("train/") :]: v for k, v in scalars.items() if k == "train/ce" or k == "train/kd"}
        parts.update({k[len("train/") :]: v for k, v in scalars.items() if k.endswith("_loss")})
        return scalars["train/loss"], parts

    # --- save -----------------------------------------------------------------------------------------
    def save(self, summary: dict) -> None:
        """The adapter (or full model), the tokenizer and `summary` (train_summary.json) into output_dir."""
        out = Path(self.config.output_dir)
        self._save_weights(out)
        if self.accelerator.is_main_process:
            (out / "train_summary.json").write_text(json.dumps(summary, indent=2))

    def leave_process_group(self) -> None:
        """One rank of several waits until every rank is done saving, then leaves the process group: a rank
        whose process exits with the group still open can abort in its teardown (SIGABRT under ZeRO-3 on
        gloo) while the main rank still writes, and torchrun then fails the run."""
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()
            self.accelerator.state.destroy_process_group()

    def _save_weights(self, out: Path) -> None:
        """The adapter (or full model) and the tokenizer into `out`; every rank calls it (ZeRO-3 gathers)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        # Gathers ZeRO-3 shards; a plain state dict otherwise. Keys are the objective's ("student.*").
        full_state = acc.get_state_dict(self.model)
        if not acc.is_main_process:
            return
        prefix = "student."
        state = {k[len(prefix) :]: v for k, v in full_state.items() if k.startswith(prefix)}
        out.mkdir(parents=True, exist_ok=True)
        student = acc.unwrap_model(self.model).student
        student.save_pretrained(out, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        if self.config.method == "full":
            student.generation_config.save_pretrained(out)
