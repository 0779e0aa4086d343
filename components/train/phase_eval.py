"""Held-out evaluation during training: the loss on held-out records, the best weights of each curriculum
phase, and teacher-vs-student samples in TensorBoard.

    eval_steps: 200        # every 200 optimizer steps of a phase, and at each phase's end (0: never)
    eval_samples: 64       # held-out records scored each time
    sample_count: 4        # answers written to TensorBoard's TEXT tab next to the teacher's

The held-out records are the test.jsonl records of the phase's sources (every source named in its mix),
up to eval_samples shared equally among them, encoded exactly like the training records. The loss is
the mean cross-entropy per scored token (the teacher's answer), so phases with different KD settings are
compared on one scale. Each phase keeps its best weights by that loss in output_dir/best/<phase>/ (the
adapter or the full model, with best.json saying the step and the loss). With checkpoints on (save_steps
and store_uri), each best is also kept in the run's store and every checkpoint records the best so far,
so a retried pod restores each phase's best folder and compares its later evaluations against it
(`BestStore` in checkpoint.py). The samples are greedy answers of the student to the first sample_count
held-out prompts, decoded one token per forward pass through the same collation as training, so they
work with every attention kernel and batching.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from components.train.batching import collate
from components.train.checkpoint import BestStore
from components.train.data import IGNORE, Example, split_prompt

log = logging.getLogger(__name__)


def phase_heldout(heldout: dict[str, list[Example]], sources: list[str], limit: int) -> list[Example]:
    """Up to `limit` held-out records, shared equally among the phase's sources that have any."""
    names = [name for name in sorted(sources) if heldout.get(name)]
    if not names:
        return []
    each = -(-limit // len(names))
    return [example for name in names for example in heldout[name][:each]][:limit]


@dataclass(frozen=True)
class HeldoutSettings:
    """What the evaluator needs of the train Config: how many held-out records and samples, how they are
    batched, where the best weights go, and whether checkpoints (which name the bests) are written."""

    output_dir: str
    eval_samples: int = 64
    sample_count: int = 4
    sample_max_new_tokens: int = 64
    batching: str = "padding_free"
    max_length: int = 1024
    checkpoints: bool = False


class PhaseEvaluator:
    """Scores the student on held-out records and keeps each phase's best weights."""

    def __init__(
        self,
        settings: HeldoutSettings,
        tokenizer,
        heldout: dict[str, list[Example]],
        device: torch.device,
        main_process: bool = True,
        stored: BestStore | None = None,
    ):
        """`main_process` writes output_dir (every rank scores); `stored` keeps the bests in the run's store."""
        self.settings = settings
        self.tokenizer = tokenizer
        self.heldout = heldout
        self.device = device
        self.main_process = main_process
        self.stored = stored
        self.best: dict[str, dict] = {}

    def _forward_logits(self, student, examples: list[Example]):
        """(logits, batch) of one forward pass over `examples`, collated as in training."""
        batch = collate(
            examples, self.tokenizer.pad_token_id, self.settings.batching, self.settings.max_length
        )
        return student(**batch.model_inputs(self.device)).logits, batch

    @torch.no_grad()
    def loss(self, student, examples: list[Example]) -> float:
        """Mean cross-entropy per scored token over `examples`, one record per forward pass."""
        total, scored = 0.0, 0
        for example in examples:
            logits, batch = self._forward_logits(student, [example])
            logits = logits.reshape(-1, logits.shape[-1])[:-1].float()
            targets = batch.labels.reshape(-1)[1:].to(logits.device)
            mask = targets != IGNORE
            total += F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
            scored += int(mask.sum().item())
        return total / max(1, scored)

    @torch.no_grad()
    def answer(self, student, prompt: list[int]) -> str:
        """The student's greedy answer to `prompt`, up to sample_max_new_tokens or its end of turn."""
        ids = list(prompt)
        stop = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        for _ in range(self.settings.sample_max_new_tokens):
            example = Example(input_ids=ids, labels=[IGNORE] * len(ids), record_id="sample")
            logits, _ = self._forward_logits(student, [example])
            token = int(logits.reshape(-1, logits.shape[-1])[len(ids) - 1].argmax())
            if token in stop:
                break
            ids.append(token)
        return self.tokenizer.decode(ids[len(prompt) :], skip_special_tokens=True)

    def samples_markdown(self, student, examples: list[Example]) -> str:
        """A Markdown table (TensorBoard's TEXT tab renders it) of prompt, teacher and student answers."""
        rows = ["| prompt | teacher | student |", "|---|---|---|"]
        for example in examples[: self.settings.sample_count]:
            prompt, answer = split_prompt(example)
            cells = (
                self.tokenizer.decode(prompt, skip_special_tokens=True)[-300:],
                self.tokenizer.decode(answer, skip_special_tokens=True),
                self.answer(student, prompt),
            )
            rows.append("| " + " | ".join(_cell(text) for text in cells) + " |")
        return "\n".join(rows)

    def evaluate(self, student, phase, phase_step: int, global_step: int, trackers, save) -> float | None:
        """Score the student now: log eval/loss (and samples); `save(folder)` writes the weights when this
        is the phase's best so far. Returns the loss, or None when the phase has no held-out records."""
        examples = phase_heldout(self.heldout, phase.source_names, self.settings.eval_samples)
        if not examples:
            return None
        was_training = student.training
        student.eval()
        loss = self.loss(student, examples)
        samples = self.samples_markdown(student, examples) if self.settings.sample_count else ""
        student.train(was_training)
        if trackers is not None:
            trackers.log({"eval/loss": loss, f"eval/loss_{phase.name}": loss}, global_step)
            if samples:
                trackers.text(f"samples/{phase.name}", samples, global_step)
        best = self.best.get(phase.name)
        log.info("phase %s step %d: held-out loss %.4f", phase.name, phase_step, loss)
        if best is None or loss < best["loss"]:
            folder = self._folder(phase.name)
            save(folder)
            self.best[phase.name] = {"loss": loss, "step": global_step, "phase_step": phase_step}
            if self.main_process:
                (folder / "best.json").write_text(json.dumps(self.best[phase.name], indent=2))
                # Only a checkpoint can name it for a retry to restore: without checkpoints, no upload.
                if self.stored and self.settings.checkpoints:
                    self.stored.save(phase.name, global_step, folder)
        return loss

    def _folder(self, phase: str) -> Path:
        return Path(self.settings.output_dir) / "best" / phase

    def resume(self, records: dict, phases: list[str]) -> None:
        """Take up a checkpoint's best-so-far `records` (phase -> loss, step, phase_step), the main process
        copying their weights from the store into output_dir/best/; a phase whose record or stored
        weights are refused starts its best over."""
        from accelerate.utils import gather_object

        records = records if isinstance(records, dict) else {}
        kept: list[str] = []
        if self.main_process:
            kept = [name for name in phases if name in records and self._restore(name, records[name])]
        # Every rank decides alike whether an evaluation is a new best (saving one is collective).
        kept = gather_object([kept])[0]
        self.best = {name: records[name] for name in kept}

    def _restore(self, phase: str, record) -> bool:
        valid = (
            isinstance(record, dict)
            and isinstance(record.get("loss"), float)
            and all(isinstance(record.get(key), int) for key in ("step", "phase_step"))
        )
        if not valid:
            log.warning(
                "best of phase %s not restored: the checkpoint's record %r is malformed", phase, record
            )
            return False
        if self.stored is None or not self.stored.restore(phase, record["step"], self._folder(phase)):
            return False
        (self._folder(phase) / "best.json").write_text(json.dumps(record, indent=2))
        return True


def _cell(text: str) -> str:
    """One table cell: escaped (teacher and student text are data), on one line, pipes kept literal."""
    return html.escape(text.strip()).replace("|", "&#124;").replace("\n", "<br>") or "(empty)"
