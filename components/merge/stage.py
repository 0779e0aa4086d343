"""Merge stage: fold a LoRA/QLoRA adapter into its base, write sharded safetensors, prove nothing changed.

    python -m components.merge --config merge.yaml

Order of work (each step is one function below):
    1. read the train output: an adapter (adapter_config.json) or a fully fine-tuned model
    2. load the base in the target dtype (QLoRA: bf16, dequantized first if the base is quantized)
    3. reference logits of base + adapter on the probe prompts, then `merge_and_unload`
    4. save: sharded safetensors, tokenizer, generation config, model card; no quantization_config left
    5. reload the written folder and compare its logits with the reference; over tolerance the stage fails
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.common.devices import note_slow_on_cpu, resolve_device
from components.common.errors import InputError
from components.common.remote_code import allows_remote_code
from components.merge.card import dataset_facts, model_card
from components.merge.config import DEFAULT_TOLERANCE, Config
from components.merge.verify import max_abs_diff, probe_batch, probe_logits

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


class MergeVerificationError(InputError):
    """The merged model's logits differ from base + adapter by more than the tolerance."""


@dataclass
class Result:
    output_dir: str
    method: str  # lora, qlora or full
    merged: bool  # an adapter was folded in (False: full fine-tuning passed through)
    verified: bool  # the logit check ran and passed
    max_logit_diff: float  # 0.0 when nothing was merged
    tolerance: float
    dtype: str
    parameters: int
    shards: int
    size_bytes: int

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "merge_max_logit_diff": self.max_logit_diff,
            "merge_parameters": float(self.parameters),
            "merge_size_bytes": float(self.size_bytes),
            "merge_shards": float(self.shards),
        }


def run(config: Config) -> Result:
    trained_dir, student_dir, output_dir = (
        Path(config.trained_dir),
        Path(config.student_dir),
        Path(config.output_dir),
    )
    summary = read_train_summary(trained_dir)
    is_adapter = (trained_dir / "adapter_config.json").is_file()
    method = summary.get("method") or ("lora" if is_adapter else "full")
    dtype = resolve_dtype(config.dtype, method, student_dir if is_adapter else trained_dir)
    device = resolve_device(config.device)
    tolerance = config.tolerance if config.tolerance is not None else DEFAULT_TOLERANCE[DTYPE_NAMES[dtype]]
    remote_code = config.trust_remote_code
    tokenizer = load_tokenizer(trained_dir, student_dir, remote_code)
    log.info("merge: %s output in %s on %s, dtype %s", method, trained_dir, device, DTYPE_NAMES[dtype])

    if is_adapter:
        model, reference = merge_adapter(
            student_dir, trained_dir, tokenizer, dtype, device, config.probe_prompts, remote_code
        )
    else:
        model, reference = load_model(trained_dir, dtype, device, "trained_dir", remote_code), None
    parameters = sum(p.numel() for p in model.parameters())
    save_model(model, tokenizer, output_dir, config.max_shard_size)
    del model
    gc.collect()

    max_diff = 0.0
    if reference is not None:
        max_diff = verify_merge(
            output_dir, reference, tokenizer, dtype, device, config.probe_prompts, remote_code
        )
        log.info(
            "merge check: max |merged - (base + adapter)| logit = %.3g (tolerance %.3g)", max_diff, tolerance
        )
        if not max_diff <= tolerance:
            raise MergeVerificationError(
                f"merge check failed: merged logits differ from base + adapter by up to {max_diff:.4g}, over "
                f"tolerance {tolerance:.4g} by {max_diff - tolerance:.4g}; the adapter in {trained_dir} may not "
                f"belong to base {student_dir}, or raise `tolerance` if {DTYPE_NAMES[dtype]} rounding explains it"
            )
    shards = sorted(output_dir.glob("*.safetensors"))
    result = Result(
        output_dir=str(output_dir),
        method=method,
        merged=is_adapter,
        verified=reference is not None,
        max_logit_diff=max_diff,
        tolerance=tolerance,
        dtype=DTYPE_NAMES[dtype],
        parameters=parameters,
        shards=len(shards),
        size_bytes=sum(p.stat().st_size for p in shards),
    )
    write_card(output_dir, config, summary, result)
    return result


def verify_merge(
    output_dir: Path, reference: torch.Tensor, tokenizer, dtype, device, prompts, remote_code: bool = False
) -> float:
    """Max |logit| difference between the merged model as written (reloaded from disk) and the reference."""
    reloaded = load_model(output_dir, dtype, device, remote_code=remote_code)
    got = probe_logits(reloaded, probe_batch(tokenizer, prompts, device))
    del reloaded
    gc.collect()
    return max_abs_diff(got, reference)


def write_card(output_dir: Path, config: Config, summary: dict[str, Any], result: Result) -> None:
    """README.md (the model card) and merge_summary.json next to the weights."""
    data = dataset_facts(config.data_dir)
    facts = {
        **summary,
        "base_model": summary.get("base_model") or config.student_dir,
        "teacher": config.teacher or data.get("teacher"),
        "dataset": config.dataset or data.get("dataset"),
        "parameters": result.parameters,
        "dtype": result.dtype,
        "max_logit_diff": result.max_logit_diff if result.merged else None,
        "tolerance": result.tolerance,
    }
    (output_dir / "README.md").write_text(model_card(facts))
    (output_dir / "merge_summary.json").write_text(json.dumps(_summary(result), indent=2) + "\n")


def read_train_summary(trained_dir: Path) -> dict[str, Any]:
    if not trained_dir.is_dir():
        raise InputError(f"trained_dir: {trained_dir} is not a folder; give the train stage's output folder")
    path = trained_dir / "train_summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_dtype(name: str, method: str, weights_dir: Path) -> torch.dtype:
    """The dtype to merge and save in: as asked, else bf16 for QLoRA, else the weights' own dtype."""
    if name != "auto":
        return TORCH_DTYPES[name]
    if method == "qlora":
        return torch.bfloat16
    config = (
        json.loads((weights_dir / "config.json").read_text())
        if (weights_dir / "config.json").is_file()
        else {}
    )
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, stored) if stored in ("float32", "float16", "bfloat16") else torch.float32


def check_model_folder(path: Path, field: str) -> None:
    if not (path / "config.json").is_file():
        what = "neither adapter_config.json (an adapter) nor" if field == "trained_dir" else "no"
        raise InputError(f"{field}: {path} holds {what} config.json (a Hugging Face model folder)")


def load_tokenizer(trained_dir: Path, student_dir: Path, remote_code: bool = False):
    """The train output's tokenizer when it saved one (it may carry a new chat template), else the base's."""
    from transformers import AutoTokenizer

    source = trained_dir if (trained_dir / "tokenizer_config.json").is_file() else student_dir
    return AutoTokenizer.from_pretrained(source, trust_remote_code=allows_remote_code(source, remote_code))


def load_model(
    path: Path,
    dtype: torch.dtype,
    device: torch.device,
    field: str = "student_dir",
    remote_code: bool = False,
):
    """A causal LM in `dtype` on `device`; a quantized checkpoint is dequantized first. The folder's own
    code runs only with `remote_code` (the run's opt-in) and its download marker."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_model_folder(path, field)
    remote_code = allows_remote_code(path, remote_code)
    if getattr(AutoConfig.from_pretrained(path, trust_remote_code=remote_code), "quantization_config", None):
        note_slow_on_cpu(f"dequantizing the quantized checkpoint {path}", device)
        model = AutoModelForCausalLM.from_pretrained(
            path, device_map={"": device}, trust_remote_code=remote_code
        )
        model = model.dequantize(dtype=dtype).to(dtype)
        drop_quantized_loading(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, device_map={"": device}, trust_remote_code=remote_code
        )
    return model.eval()


def drop_quantized_loading(model) -> None:
    """transformers keeps the conversions it loaded a checkpoint with, to undo them when saving; those
    that unpacked 4-/8-bit tensors have no undo, and after dequantize() the weights are plain anyway."""

    def reversible(conversion) -> bool:
        try:
            conversion.reverse_transform()
        except NotImplementedError:
            return False
        return True

    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if reversible(c)]


def merge_adapter(student_dir, trained_dir, tokenizer, dtype, device, prompts, remote_code: bool = False):
    """(merged model, reference logits of base + adapter before merging)."""
    from peft import PeftModel

    base = load_model(student_dir, dtype, device, remote_code=remote_code)
    try:
        model = PeftModel.from_pretrained(base, str(trained_dir)).eval()
    except (ValueError, RuntimeError, KeyError) as error:
        raise InputError(
            f"trained_dir: cannot apply the adapter in {trained_dir} to base {student_dir}: {error}"
        ) from None
    # Adapter weights may be stored in fp32; the merge happens in the base's dtype.
    model.to(dtype)
    reference = probe_logits(model, probe_batch(tokenizer, prompts, device))
    return model.merge_and_unload(), reference


def save_model(model, tokenizer, output_dir: Path, max_shard_size: str) -> None:
    """Sharded safetensors + tokenizer + generation config, with no trace of quantization."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob("*.safetensors*"):
        stale.unlink()
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    generation = model.generation_config
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(output_dir)
    config_path = output_dir / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def _summary(result: Result) -> dict[str, Any]:
    return {k: v for k, v in vars(result).items() if k != "output_dir"}
