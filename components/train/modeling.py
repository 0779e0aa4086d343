"""Loading the student (full, LoRA or 4-bit QLoRA) and a frozen local teacher, and checking they fit.

Numerics per method:
- full: weights in fp32 (AdamW on bf16 weights loses small updates), the forward pass autocast to bf16/fp16;
- lora: the frozen base in the compute dtype (bf16 halves its memory), the adapters in fp32;
- qlora: the base quantized to 4-bit NF4 with double quantization and bf16 compute (bitsandbytes; on a CPU
  too, slowly).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from components.common.devices import note_slow_on_cpu
from components.common.errors import ConfigError, InputError
from components.common.remote_code import allows_remote_code
from components.train import varlen
from components.train.init_checkpoint import init_checkpoint_folder, load_adapter_weights

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'bf16', 'fp16' or 'fp32' for this device; fp16 on a CPU fails here, before any loading."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        # accelerate autocasts fp16 (with its loss scaler) only on accelerators; on a CPU it would
        # silently train the fp16 weights unscaled.
        raise ConfigError(
            "precision: 'fp16' mixed precision needs a CUDA GPU and none is visible; use 'bf16' (autocast "
            "on the CPU) or 'fp32'"
        )
    return precision


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_model_dir(path: str, field: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise InputError(f"{field}: {folder} is not a Hugging Face model folder (no config.json)")
    return folder


@dataclass(frozen=True)
class ModelLoading:
    """How the trainer loads its student and teacher: their attention kernel (`attention_kwargs`), and
    the switches both follow."""

    attention: dict[str, str] = field(default_factory=dict)
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    compile: bool = False


def attention_kwargs(attention: str, batching: str, attention_maps: bool) -> dict[str, str]:
    """The attention kernel for student and teacher: they always see the same batches."""
    if attention_maps:
        # Attention maps are only returned by the eager kernel, never by sdpa or flash attention.
        return {"attn_implementation": "eager"}
    if attention != "auto":
        return {"attn_implementation": attention}
    if batching == "padding_free":
        return {"attn_implementation": varlen.register()}
    return {}


def load_student(
    student_dir: str,
    method: str,
    lora,
    loading: ModelLoading,
    device: torch.device,
    precision: str,
    init_checkpoint: str = "",
):
    """The student ready to train: frozen base + LoRA adapters (`lora`), or every weight trainable;
    started from `init_checkpoint` (an earlier run's adapter or full model) when given."""
    from transformers import AutoModelForCausalLM

    folder = check_model_dir(student_dir, "student_dir")
    start = init_checkpoint_folder(init_checkpoint, method) if init_checkpoint else None
    if start is not None and method == "full":
        folder = start
    kwargs: dict = {"dtype": torch.float32 if method == "full" else DTYPES[precision]}
    kwargs.update(loading.attention)
    if method == "qlora":
        kwargs.update(qlora_kwargs(device, precision))
    model = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=allows_remote_code(folder, loading.trust_remote_code), **kwargs
    )
    if method != "qlora":
        model.to(device)
    if loading.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if method != "full":
        model = add_lora(model, lora, method, loading.gradient_checkpointing, autocast=precision != "fp32")
        if start is not None:
            load_adapter_weights(model, start)
    model.train()
    if loading.compile:
        compile_blocks(model)
    return model


def compile_blocks(model) -> None:
    # Block by block ("regional" compilation): every block has the same code, so one compilation serves
    # them all, in a fraction of the time a whole-model graph takes.
    for block in backbone(model).layers:
        block.compile(dynamic=True)


def qlora_kwargs(device: torch.device, precision: str) -> dict:
    note_slow_on_cpu("method: qlora (4-bit bitsandbytes)", device)
    try:
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise InputError("method: 'qlora' needs bitsandbytes: pip install 'kfp-distill[qlora]'") from None
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[precision] if precision != "fp32" else torch.float32,
    )
    return {"quantization_config": quantization, "device_map": device_map(device)}


def device_map(device: torch.device) -> dict:
    """Where bitsandbytes puts every layer of a quantized model: all on this device."""
    if device.type == "cuda":
        return {"": device.index if device.index is not None else torch.cuda.current_device()}
    return {"": device.type}


def add_lora(
    model, settings, method: str = "lora", gradient_checkpointing: bool = False, autocast: bool = False
):
    """LoRA adapters of `settings` (the Config's `lora`) on `model`; `method` qlora prepares a 4-bit base."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    targets = settings.target_modules
    lora = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        modules_to_save=settings.modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if autocast:
        # peft casts each adapter's input to the adapters' fp32 and autocast casts it back to bf16: a new
        # copy of every adapted layer's input, kept for the backward pass (q, k and v each keep their
        # own). Under autocast the matmul runs in bf16 anyway, so the cast only costs memory: 63.8 against
        # 58.6 KiB kept per token by a Qwen2.5-0.5B-shaped block, for the same loss (the input gradients
        # of the branches are then summed in bf16: they agree to bf16 rounding).
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    if gradient_checkpointing:
        # With a frozen embedding nothing upstream needs grad; checkpointed blocks then drop the adapters'.
        model.enable_input_require_grads()
    return model


def base_model(model):
    """The transformers CausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The decoder stack (embeddings + blocks + final norm) that yields the last hidden states."""
    causal_lm = base_model(model)
    return getattr(causal_lm, causal_lm.base_model_prefix)


def load_teacher(kd, loading: ModelLoading, device: torch.device, precision: str):
    """A frozen teacher for logit/intermediate KD (`kd`: the Config's kd settings) in the run's precision,
    or 8-bit; no grads."""
    from transformers import AutoModelForCausalLM

    folder = check_model_dir(kd.teacher_dir, "kd.teacher_dir")
    kwargs: dict = {"dtype": DTYPES[precision]}
    if kd.teacher_8bit:
        from transformers import BitsAndBytesConfig

        note_slow_on_cpu("kd.teacher_8bit (8-bit bitsandbytes)", device)
        kwargs.update(
            quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map=device_map(device)
        )
    kwargs.update(loading.attention)
    teacher = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=allows_remote_code(folder, loading.trust_remote_code), **kwargs
    )
    if kd.teacher_adapter:
        from peft import PeftModel

        # Applied unmerged: a base + LoRA teacher needs no merge step, and in 8-bit cannot be merged.
        teacher = PeftModel.from_pretrained(teacher, teacher_adapter_folder(kd.teacher_adapter))
    if not kd.teacher_8bit:
        teacher.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    if loading.compile:
        compile_blocks(teacher)
    return teacher


def teacher_adapter_folder(location: str) -> str:
    """A local folder for the KD teacher's adapter; an s3:// one is fetched into a scratch folder first."""
    if not location.startswith("s3://"):
        return str(check_adapter_dir(location))
    import tempfile

    from components.common.store import open_store

    target = Path(tempfile.mkdtemp(prefix="kd-teacher-adapter-"))
    open_store(location).download_dir("", target)
    return str(check_adapter_dir(str(target), location))


def check_adapter_dir(path: str, shown: str = "") -> Path:
    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        raise InputError(
            f"kd.teacher_adapter: {shown or path} holds no adapter_config.json; give a PEFT adapter folder"
        )
    return folder


def check_vocab(student_tokenizer, student_model, teacher_tokenizer, teacher_model) -> int:
    """Refuse logit KD between models whose token ids mean different things, and say why."""
    s_rows = base_model(student_model).get_output_embeddings().weight.shape[0]
    t_rows = teacher_model.get_output_embeddings().weight.shape[0]
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab != t_vocab:
        differing = sorted(set(s_vocab.items()) ^ set(t_vocab.items()))[:3]
        raise InputError(
            f"kd.teacher_dir: the teacher's tokenizer ({len(t_vocab)} tokens, output head {t_rows} rows) "
            f"differs from the student's ({len(s_vocab)} tokens, head {s_rows} rows), e.g. {differing}; "
            "logit distillation compares the two distributions "
            "token id by token id, so both must use the same tokenizer. Use a teacher from the student's "
            "family, or sequence-level distillation (kd.kind: none)"
        )
    if s_rows != t_rows:
        # Same tokenizer, different padding of the embedding matrix (Qwen2.5: 151936 for 0.5B-3B, 152064
        # for 7B+). Rows past len(tokenizer) are never real tokens, so compare over the shared prefix.
        log.info(
            "student and teacher output heads have %d and %d rows for the same %d-token tokenizer; "
            "KD compares the first %d",
            s_rows,
            t_rows,
            len(s_vocab),
            min(s_rows, t_rows),
        )
    if len(s_vocab) > min(s_rows, t_rows):
        raise InputError(
            f"kd.teacher_dir: the tokenizer has {len(s_vocab)} tokens but an output head has only "
            f"{min(s_rows, t_rows)} rows (student {s_rows}, teacher {t_rows}); the models do not match "
            "their tokenizer"
        )
    return min(s_rows, t_rows)


@contextmanager
def padded_attention(model):
    """Padded inputs (sampling with a KV cache, a scorer's batch) on a model loaded with the padding-free
    kernel, which needs per-example offsets: sdpa meanwhile, the same weights."""
    causal_lm = base_model(model)
    current = causal_lm.config._attn_implementation
    if current != varlen.NAME:
        yield
        return
    causal_lm.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        causal_lm.set_attn_implementation(current)
