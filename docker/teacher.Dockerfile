# syntax=docker/dockerfile:1.7
# Teacher-data stage: asks an OpenAI-compatible teacher API (DeepSeek, DashScope, vLLM, ...) over HTTP,
# so the default image is small and CPU-only. For a local Hugging Face teacher on a GPU node (provider
# local), build its GPU variant; PyPI's torch wheel then brings its own CUDA libraries:
#   make build-teacher
#   make build-teacher BUILD_ARGS="--build-arg LOCAL_TEACHER=1"
#   docker build -f docker/teacher.Dockerfile --build-arg VERSION=$TAG -t $(python -m pipelines.images teacher) .
# Build arguments (README "Building the images"):
#   BASE_IMAGE   the base, pinned by tag; pin a digest with --build-arg BASE_IMAGE=<name:tag>@sha256:<digest>,
#                or name a mirror, or the stand-in of docker/local-base.sh where no registry is reachable.
#   PYTHON       the interpreter the venv is made from; installed with apt when the base lacks it.
#   LOCAL_TEACHER  1: the teacher-local extra (torch, transformers, bitsandbytes for 8-bit and 4-bit
#                teachers) and the vllm extra; 0: the API teacher only, no torch.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm
ARG PYTHON=python3
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

# Dependencies before source: this layer is rebuilt only when pyproject.toml or the constraints change.
ARG LOCAL_TEACHER=0
COPY pyproject.toml docker/requirements.py /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    python /build/requirements.py teacher pipeline teacher-local=${LOCAL_TEACHER} vllm=${LOCAL_TEACHER} \
        > /build/requirements.txt \
 && pip install -c /build/constraints.txt --find-links /wheels -r /build/requirements.txt

COPY components /app/components
COPY pipelines /app/pipelines

USER 10001:10001
WORKDIR /home/distill

# Labels last: a new VERSION must not invalidate the dependency layers above.
ARG VERSION=dev
ARG SOURCE=https://github.com/kfp-distill/kfp-distill
LABEL org.opencontainers.image.title="kfp-distill-teacher" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
