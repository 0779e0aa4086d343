# kfp-distill: every command a user or CI runs. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch by default (this file lies on the dev machines' disk); a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
REGISTRY ?= ghcr.io/kfp-distill
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
PIPELINE_YAML := pipelines/distill_pipeline.yaml
export REGISTRY TAG

include docker/cluster.mk

.PHONY: help install demo test test-images image-tools browser lint format compile clean

help:
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(VENV)/.installed ## create or update the virtual environment (.venv)

# Pinned by the same constraints as the images, so tests run what the images ship.
$(VENV)/.installed: pyproject.toml docker/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -c docker/constraints.txt -e '.[dev]'
	touch $@

demo: install ## run the whole pipeline locally through kfp.local on the embedded demo
	$(BIN)/python -m pipelines.run_local --workdir .demo

# The venv's bin on PATH, as when it is activated: tests call its tools (hadolint, uv) by name.
test: install browser ## run the test suite
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

# The images are built and the compiled pipeline run in them (tests/images: 18 minutes from an empty
# buildah store on 2 shared cores, of which 13 build the five images; unchanged images are reused);
# where no engine works, Debian's buildah and mmdebstrap are installed to build them without a daemon.
test-images: install image-tools ## build the CPU images, check each, and run the demo pipeline in them
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m images tests/images

image-tools:
	@$(BIN)/python -m pipelines.container_engine detect >/dev/null 2>&1 && command -v mmdebstrap >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah mmdebstrap >/dev/null; } \
		|| echo "no container engine and no apt: images cannot be built here (the image tests skip); install docker, podman or buildah"

# The HTML report is checked in headless Debian chromium; where it cannot be installed that test skips.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; } \
		|| echo "chromium is not installed: the report's browser test will be skipped"

lint: install ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: install ## write the compiled pipeline to pipelines/distill_pipeline.yaml (images from REGISTRY, TAG)
	$(BIN)/python -m pipelines.distill_pipeline $(PIPELINE_YAML)

clean:
	rm -rf .demo .pytest_cache
