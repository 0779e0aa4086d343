# syntax=docker/dockerfile:1.7
# Merge stage: folds the LoRA adapter into the base weights on CPU (memory-bound, no GPU needed)
# and writes sharded safetensors.
#   make build-merge
#   docker build -f docker/merge.Dockerfile --build-arg VERSION=$TAG -t $(python -m pipelines.images merge) .
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HOME=/home/distill \
    HF_HOME=/home/distill/.cache/huggingface

RUN useradd --uid 10001 --user-group --create-home --home-dir /home/distill distill \
 && python -m venv /opt/venv

# Dependencies before source: this layer is rebuilt only when pyproject.toml or the constraints change.
# torch first, as the CPU build, so the extra's `torch>=2.4` is already met and no CUDA wheels come in.
COPY pyproject.toml docker/requirements.py docker/constraints.txt /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /build/constraints.txt --extra-index-url https://merge.pytorch.org/whl/cpu torch==2.13.0+cpu \
 && python /build/requirements.py merge pipeline > /build/requirements.txt \
 && pip install -c /build/constraints.txt -r /build/requirements.txt

COPY components /app/components
COPY pipelines /app/pipelines

USER 10001:10001
WORKDIR /home/distill

# Labels last: a new VERSION must not invalidate the dependency layers above.
ARG VERSION=dev
ARG SOURCE=https://github.com/kfp-distill/kfp-distill
LABEL org.opencontainers.image.title="kfp-distill-merge" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
