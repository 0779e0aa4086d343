# syntax=docker/dockerfile:1.7
# Train stage: LoRA / QLoRA / full fine-tuning on NVIDIA GPUs, single pod or a PyTorchJob worker.
#   make build-train
#   docker build -f docker/train.Dockerfile --build-arg VERSION=$TAG -t $(python -m pipelines.images train) .
# Build arguments:
#   TORCH_CUDA_ARCH_LIST  GPU architectures DeepSpeed's ops are compiled for (8.0 A100, 8.6/8.9 L4/L40S,
#                         9.0 H100/H200, 10.0 B200, 12.0 RTX PRO 6000); fewer archs build faster.
#   FLASH_ATTN            a flash-attn version to compile in (e.g. 2.8.3), empty to skip. torch's SDPA
#                         already runs FlashAttention-2 kernels; the package adds varlen attention for
#                         packed batches and costs about an hour of compile time.
# torch 2.13.0 from PyPI is built against CUDA 13 and carries its CUDA libraries; the CUDA 13.0 bases
# match it, and the devel base gives nvcc for compiling DeepSpeed's ops (the runtime image has no nvcc,
# so ops are built here for the target architectures instead of JIT at start-up).

FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS wheels
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0"
ARG FLASH_ATTN=""
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev git \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv
COPY docker/constraints.txt /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /build/constraints.txt torch==2.13.0 ninja packaging psutil py-cpuinfo hjson setuptools wheel \
 && DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 \
    pip wheel --no-deps --no-build-isolation -c /build/constraints.txt -w /wheels deepspeed \
 && if [ -n "${FLASH_ATTN}" ]; then \
      MAX_JOBS=4 pip wheel --no-deps --no-build-isolation -w /wheels "flash-attn==${FLASH_ATTN}"; \
    fi

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HOME=/home/distill \
    HF_HOME=/home/distill/.cache/huggingface \
    TRITON_CACHE_DIR=/tmp/triton

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/distill distill \
 && python3.12 -m venv /opt/venv

# Dependencies before source: rebuilt only when pyproject.toml, the constraints or the wheels change.
# --only-binary keeps pip on the DeepSpeed wheel with pre-built ops instead of PyPI's source release.
COPY pyproject.toml docker/requirements.py docker/constraints.txt /build/
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python /build/requirements.py train deepspeed qlora pipeline > /build/requirements.txt \
 && pip install -c /build/constraints.txt --find-links /wheels --only-binary deepspeed \
        torch==2.13.0 -r /build/requirements.txt \
 && if ls /wheels/flash_attn-*.whl >/dev/null 2>&1; then pip install --no-deps /wheels/flash_attn-*.whl; fi \
 && python -c "from deepspeed.git_version_info import installed_ops as ops; \
assert ops['fused_adam'] and ops['cpu_adam'], f'DeepSpeed ops not pre-built: {ops}'"

COPY components /app/components
COPY pipelines /app/pipelines

USER 10001:10001
WORKDIR /home/distill

# Labels last: a new VERSION must not invalidate the dependency layers above.
ARG VERSION=dev
ARG SOURCE=https://github.com/kfp-distill/kfp-distill
LABEL org.opencontainers.image.title="kfp-distill-train" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
