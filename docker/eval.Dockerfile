# syntax=docker/dockerfile:1.7
# Eval stage: generates on the test split with the untrained and the distilled student, then scores them.
#   make build-eval
#   docker build -f docker/eval.Dockerfile --build-arg VERSION=$TAG -t $(python -m pipelines.images eval) .
# CUDA, not CPU: generation is token by token, and for a real student (0.5B-8B) over a few hundred test
# prompts a GPU is one to two orders of magnitude faster. The image also runs on a CPU node (torch falls
# back to CPU), so the pipeline can schedule it either way. Its first layers are the train image's, so a
# build host and a registry hold them once.
# Build arguments (README "Building the images"):
#   BASE_IMAGE   the base, pinned by tag; pin a digest with --build-arg BASE_IMAGE=<name:tag>@sha256:<digest>,
#                or name a mirror, or the stand-in of docker/local-base.sh where no registry is reachable.
#   PYTHON       the interpreter the venv is made from; installed with apt when the base lacks it.
#   TORCH, TORCH_INDEX   the torch build and an extra index it comes from (empty: the package index only).
#                Wheels in a folder mounted at /wheels (`buildah build -v DIR:/wheels`) are taken first.
#   A CPU variant, for machines without a GPU (CI), builds from this same file:
#   --build-arg BASE_IMAGE=<a Debian/Ubuntu base with python3> --build-arg PYTHON=python3
#   --build-arg TORCH=torch==2.13.0+cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   --build-arg VLLM=0   (`make build VARIANT=cpu` passes these).
#   VLLM         1: the vllm extra, so generation runs on vLLM on a GPU (eval.engine auto); 0: HF generate.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
ARG PYTHON=python3.12
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=
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

# Dependencies before source: this layer is rebuilt only when pyproject.toml or the constraints change.
# The teacher extra too: the LLM judge scores answers through the teacher's OpenAI-compatible client.
ARG VLLM=1
COPY pyproject.toml docker/requirements.py /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    python /build/requirements.py eval teacher pipeline vllm=${VLLM} > /build/requirements.txt \
 && pip install -c /build/constraints.txt -r /build/requirements.txt

COPY components /app/components
COPY pipelines /app/pipelines

USER 10001:10001
WORKDIR /home/distill

# Labels last: a new VERSION must not invalidate the dependency layers above.
ARG VERSION=dev
ARG SOURCE=https://github.com/kfp-distill/kfp-distill
LABEL org.opencontainers.image.title="kfp-distill-eval" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
