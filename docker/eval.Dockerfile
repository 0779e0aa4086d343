# syntax=docker/dockerfile:1.7
# Eval stage: generates on the test split with the untrained and the distilled student, then scores them.
#   make build-eval
#   docker build -f docker/eval.Dockerfile --build-arg VERSION=$TAG -t $(python -m pipelines.images eval) .
# CUDA, not CPU: generation is token by token, and for a real student (0.5B-8B) over a few hundred test
# prompts a GPU is one to two orders of magnitude faster. The image also runs on a CPU node (torch falls
# back to CPU), so the pipeline can schedule it either way. Its first layers are the train image's, so a
# build host and a registry hold them once.
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

# Dependencies before source: this layer is rebuilt only when pyproject.toml or the constraints change.
# The teacher extra too: the LLM judge scores answers through the teacher's OpenAI-compatible client.
COPY pyproject.toml docker/requirements.py docker/constraints.txt /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    python /build/requirements.py eval teacher pipeline > /build/requirements.txt \
 && pip install -c /build/constraints.txt torch==2.13.0 -r /build/requirements.txt

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
