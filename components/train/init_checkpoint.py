"""`init_checkpoint`: a run (or a curriculum slice, start_phase) starts from a chosen checkpoint of an
earlier run, as seed 002's `--start_stage 2 --checkpoint_path ./stage1_best` does.

The checkpoint is a folder the train stage writes: an earlier run's output_dir, or one phase's best
weights in it (output_dir/best/<phase>/), local or s3://bucket/prefix. With LoRA (and QLoRA) it holds the
adapter: the student is built from student_dir as usual and the adapter's weights are loaded into its
fresh adapters, so the lora settings must be the checkpoint's. With full fine-tuning it holds the whole
model, loaded in place of student_dir's weights (the tokenizer still comes from student_dir). Only
safetensors are read: the folder may come from a bucket others write.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.common.errors import ConfigError, InputError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FIX = "give an earlier run's train output_dir or one phase's best weights in it (output_dir/best/<phase>)"


def check_init_checkpoint(folder: Path, method: str, shown: str = "") -> Path:
    """`folder` when it holds a checkpoint `method` can start from; a one-line error naming the field if
    not."""
    where = shown or str(folder)
    if not folder.is_dir():
        raise ConfigError(f"init_checkpoint: {where} is not a folder; {FIX}")
    if method == "full":
        missing = [] if (folder / "config.json").is_file() else ["config.json"]
        if not any(folder.glob("*.safetensors")):
            missing.append("model .safetensors")
        kind = "full model"
    else:
        missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
        kind = "LoRA adapter"
    if missing:
        raise ConfigError(
            f"init_checkpoint: {where} is not a {kind} checkpoint (no {' or '.join(missing)}) for method "
            f"{method}; {FIX}"
        )
    return folder


def init_checkpoint_folder(location: str, method: str) -> Path:
    """The checkpoint as a local folder, checked: one in s3:// is fetched into a scratch folder first."""
    if not location.startswith("s3://"):
        return check_init_checkpoint(Path(location), method)
    from components.common.store import open_store

    target = Path(tempfile.mkdtemp(prefix="init-checkpoint-"))
    open_store(location).download_dir("", target)
    return check_init_checkpoint(target, method, location)


def load_adapter_weights(model, folder: Path) -> None:
    """The checkpoint's adapter weights into `model`'s fresh adapters: every one of them, same shapes."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(folder / "adapter_model.safetensors")
    try:
        loaded = set_peft_model_state_dict(model, weights)
    except RuntimeError as error:  # a shape mismatch: another lora.r or target
        first = str(error).strip().splitlines()[-1].strip()
        raise InputError(
            f"init_checkpoint: {folder}: its adapter does not fit the lora settings ({first})"
        ) from None
    missing = [key for key in loaded.missing_keys if "lora_" in key]
    if missing or loaded.unexpected_keys:
        name = (missing or loaded.unexpected_keys)[0]
        raise InputError(
            f"init_checkpoint: {folder}: its adapter does not match this run's lora settings ({name} "
            f"{'missing' if missing else 'unexpected'}); use the lora settings of the run that wrote it"
        )
