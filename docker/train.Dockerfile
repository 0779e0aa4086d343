# syntax=docker/dockerfile:1.7
# Train stage: LoRA / QLoRA / full fine-tuning on NVIDIA GPUs, single pod or a PyTorchJob worker.
#   make build-train
#   docker build -f docker/train.Dockerfile --build-arg VERSION=$TAG -t $(python -m pipelines.images train) .
# Build arguments (README "Building the images"):
#   BASE_IMAGE   the base, pinned by tag; pin a digest with --build-arg BASE_IMAGE=<name:tag>@sha256:<digest>,
#                or name a mirror, or the stand-in of docker/local-base.sh where no registry is reachable.
#   PYTHON       the interpreter the venv is made from; installed with apt when the base lacks it.
#   TORCH, TORCH_INDEX   the torch build and an extra index it comes from (empty: the package index only).
#                Wheels in a folder mounted at /wheels (`buildah build -v DIR:/wheels`) are taken first.
#   BUILD_BASE_IMAGE  the base of the wheel-building stage (the CUDA devel image: it has nvcc).
#   DS_PREBUILD  1: compile DeepSpeed's fused_adam, cpu_adam and utils ops into its wheel here, for
#                TORCH_CUDA_ARCH_LIST, instead of JIT at start-up (the runtime base has no nvcc); 0: no ops,
#                and the image gets g++ and the Python headers, so DeepSpeed JIT-builds the ops it needs
#                (on a CPU its shm comm op: ZeRO over gloo, components/train/deepspeed_cpu.py).
#   TORCH_CUDA_ARCH_LIST  GPU architectures the ops are compiled for (8.0 A100, 8.6/8.9 L4/L40S,
#                9.0 H100/H200, 10.0 B200, 12.0 RTX PRO 6000); fewer archs build faster.
#   FLASH_ATTN   1: compile flash-attn in, at the version docker/constraints.txt pins, from source
#                (FLASH_ATTENTION_FORCE_BUILD, never a prebuilt wheel fetched from elsewhere). torch's SDPA
#                already runs FlashAttention-2 kernels; the package adds varlen attention for packed
#                batches and costs about an hour of compile time.
#   VLLM         1: the vllm extra, for on-policy samples from a vLLM engine beside the student; 0 (the CPU
#                variant): none.
#   TRACKERS     1: the trackers extra (wandb, swanlab), for train.report_to; keys from the Secret
#                distill-trackers. 0: TensorBoard only.
#   A CPU variant, for machines without a GPU (CI), builds from this same file:
#   --build-arg BASE_IMAGE=<a Debian/Ubuntu base with python3> --build-arg PYTHON=python3
#   --build-arg TORCH=torch==2.13.0+cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   --build-arg BUILD_BASE_IMAGE=<the same base> --build-arg DS_PREBUILD=0 --build-arg VLLM=0
#   (`make build VARIANT=cpu`).
# torch 2.13.0 from PyPI is built against CUDA 13 and carries its CUDA libraries; the CUDA 13.0 bases
# match it.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
ARG BUILD_BASE_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
ARG PYTHON=python3.12
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=
ARG DS_PREBUILD=1

FROM ${BUILD_BASE_IMAGE} AS wheels

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

# The steps from here to torch are the same text in every stage Dockerfile (the teacher image stops
# before torch), so an engine with a layer cache builds the venv and torch once for all of them.
# pip's cache is the cache mount's folder, not $HOME's (HOME is the runtime user's, which root's pip
# refuses); an ARG, so it stays out of the image.
ARG PIP_CACHE_DIR=/root/.cache/pip
ARG PYTHON
RUN if ! command -v "${PYTHON}" >/dev/null; then apt-get update \
      && apt-get install -y --no-install-recommends "${PYTHON}" "${PYTHON}-venv" \
      && rm -rf /var/lib/apt/lists/*; fi \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/distill distill \
 && "${PYTHON}" -m venv /opt/venv
COPY docker/constraints.txt /build/
ARG TORCH
ARG TORCH_INDEX
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /build/constraints.txt --find-links /wheels \
        ${TORCH_INDEX:+--extra-index-url "${TORCH_INDEX}"} "${TORCH}"
ARG DS_PREBUILD
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0;12.0"
ARG FLASH_ATTN=0
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "${DS_PREBUILD}" = 1 ] || [ "${FLASH_ATTN}" = 1 ]; then apt-get update \
      && apt-get install -y --no-install-recommends "${PYTHON}-dev" git \
      && rm -rf /var/lib/apt/lists/*; fi \
 && pip install -c /build/constraints.txt ninja packaging psutil py-cpuinfo hjson setuptools wheel \
 && DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=${DS_PREBUILD} DS_BUILD_CPU_ADAM=${DS_PREBUILD} \
    DS_BUILD_UTILS=${DS_PREBUILD} \
    pip wheel --no-deps --no-build-isolation -c /build/constraints.txt -w /dist deepspeed \
 && if [ "${FLASH_ATTN}" = 1 ]; then FLASH_ATTENTION_FORCE_BUILD=TRUE MAX_JOBS=4 \
      pip wheel --no-deps --no-build-isolation -c /build/constraints.txt -w /dist flash-attn; fi

FROM ${BASE_IMAGE}

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

# The steps from here to torch are the same text in every stage Dockerfile (the teacher image stops
# before torch), so an engine with a layer cache builds the venv and torch once for all of them.
# pip's cache is the cache mount's folder, not $HOME's (HOME is the runtime user's, which root's pip
# refuses); an ARG, so it stays out of the image.
ARG PIP_CACHE_DIR=/root/.cache/pip
ARG PYTHON
RUN if ! command -v "${PYTHON}" >/dev/null; then apt-get update \
      && apt-get install -y --no-install-recommends "${PYTHON}" "${PYTHON}-venv" \
      && rm -rf /var/lib/apt/lists/*; fi \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/distill distill \
 && "${PYTHON}" -m venv /opt/venv
COPY docker/constraints.txt /build/
ARG TORCH
ARG TORCH_INDEX
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /build/constraints.txt --find-links /wheels \
        ${TORCH_INDEX:+--extra-index-url "${TORCH_INDEX}"} "${TORCH}"

# Dependencies before source: rebuilt only when pyproject.toml, the constraints or the wheels change.
# --only-binary keeps pip on the DeepSpeed wheel built above instead of PyPI's source release. The
# wheels are copied, not bind-mounted from the stage: buildah cannot mount a stage it took from its
# cache; they add the size of the DeepSpeed (and flash-attn) wheel to the image.
ARG DS_PREBUILD
ARG VLLM=1
ARG TRACKERS=0
COPY --from=wheels /dist /dist
COPY pyproject.toml docker/requirements.py /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "${DS_PREBUILD}" = 0 ]; then apt-get update \
      && apt-get install -y --no-install-recommends g++ "${PYTHON}-dev" \
      && rm -rf /var/lib/apt/lists/*; fi \
 && python /build/requirements.py train deepspeed qlora pipeline vllm=${VLLM} trackers=${TRACKERS} \
        > /build/requirements.txt \
 && pip install -c /build/constraints.txt --find-links /dist --only-binary deepspeed \
        -r /build/requirements.txt \
 && if ls /dist/flash_attn-*.whl >/dev/null 2>&1; then pip install --no-deps /dist/flash_attn-*.whl; fi \
 && if [ "${DS_PREBUILD}" = 1 ]; then python -c "from deepspeed.git_version_info import installed_ops as ops; \
assert ops['fused_adam'] and ops['cpu_adam'], f'DeepSpeed ops not pre-built: {ops}'"; fi

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
