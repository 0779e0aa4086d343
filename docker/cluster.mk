# Image and cluster targets, included by the Makefile (`include docker/cluster.mk`): build and push the stage
# images, run the demo in them, submit a run. The engine is docker (BuildKit) where its daemon answers, else
# podman, else buildah (unprivileged, no daemon); ENGINE= chooses (pipelines/container_engine.py).
#   make build                          every stage image, tagged $(REGISTRY)/kfp-distill-<stage>:$(TAG)
#   make build-train PLATFORM=linux/arm64 BUILD_ARGS="--build-arg TORCH_CUDA_ARCH_LIST=9.0"
#   make build BASE_IMAGE=mirror.local/python:3.11.13-slim-bookworm@sha256:...   every stage on that base
#   make build VARIANT=cpu              CPU torch, no DeepSpeed ops: the train and eval images without CUDA
#   make push                           push every image (after `docker login`, `podman login`, ...)
#   make demo-containers                the demo, each task of the compiled pipeline in its CPU image
#   make submit RUN_CONFIG=run.yaml SUBMIT_ARGS="--wait --experiment nightly"
# Image names come from pipelines/images.py, the one place the compiled pipeline takes them from too, so
# `make build push submit` with the same REGISTRY and TAG always runs the images it built.
STAGES := download teacher train merge eval
ENGINE ?=
PLATFORM ?= linux/amd64
VARIANT ?= cuda
BASE_IMAGE ?=
# A folder of wheels pip takes first in a build (podman, buildah): where torch's CPU build lies.
WHEELS ?=
BUILD_ARGS ?=
BUILD_FLAGS ?=
RUN_CONFIG ?=
SUBMIT_ARGS ?=
engine = ENGINE=$(ENGINE) REGISTRY=$(REGISTRY) TAG=$(TAG) $(BIN)/python -m pipelines.container_engine
build_options = --variant $(VARIANT) $(if $(PLATFORM),--platform $(PLATFORM)) \
	$(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(WHEELS),--wheels $(WHEELS)) $(BUILD_ARGS) $(BUILD_FLAGS)

# The CPU images of the container demo and its tests: a fixed name, so that unchanged images are reused.
CPU_REGISTRY ?= localhost/kfp-distill
CPU_TAG ?= cpu
# Where no registry is reachable, docker/local-base.sh makes this stand-in from Debian packages (buildah).
CPU_BASE_IMAGE ?= localhost/kfp-distill-base:bookworm
CONTAINER_DEMO_DIR ?= .demo-containers
# More options of pipelines/run_containers.py, e.g. --env OMP_NUM_THREADS=1 where other jobs share the cores.
CONTAINER_DEMO_ARGS ?=
CPU_WHEELS ?= $(shell $(BIN)/python -m pip config get global.find-links 2>/dev/null)
# Some of them only (`make images-cpu CPU_STAGES=train`); empty: all five.
CPU_STAGES ?=

.PHONY: build push submit local-base images-cpu demo-containers \
	$(STAGES:%=build-%) $(STAGES:%=push-%)

build: | $(VENV)/.installed ## build every stage image (ENGINE=docker|podman|buildah, VARIANT=cuda|cpu, BASE_IMAGE=)
	$(engine) build $(build_options)

push: | $(VENV)/.installed ## push every stage image to REGISTRY
	$(engine) push

$(STAGES:%=build-%): build-%: | $(VENV)/.installed
	$(engine) build $* $(build_options)

$(STAGES:%=push-%): push-%: | $(VENV)/.installed
	$(engine) push $*

local-base: ## make the stand-in base CPU_BASE_IMAGE from Debian packages, unless it exists (mmdebstrap, buildah)
	@STORAGE_DRIVER=$${STORAGE_DRIVER:-vfs} buildah inspect --type image $(CPU_BASE_IMAGE) >/dev/null 2>&1 \
		|| STORAGE_DRIVER=$${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=$${BUILDAH_ISOLATION:-chroot} \
		docker/local-base.sh $(CPU_BASE_IMAGE)

images-cpu: image-tools $(if $(filter localhost/%,$(CPU_BASE_IMAGE)),local-base) | $(VENV)/.installed ## the CPU variant of every image, on CPU_BASE_IMAGE, reused when unchanged
	ENGINE=$(ENGINE) REGISTRY=$(CPU_REGISTRY) TAG=$(CPU_TAG) $(BIN)/python -m pipelines.container_engine build \
		$(CPU_STAGES) --variant cpu --base-image $(CPU_BASE_IMAGE) $(if $(CPU_WHEELS),--wheels $(CPU_WHEELS)) $(BUILD_FLAGS)

demo-containers: images-cpu ## the demo, every task of the compiled pipeline run in its CPU image
	ENGINE=$(ENGINE) REGISTRY=$(CPU_REGISTRY) TAG=$(CPU_TAG) \
		$(BIN)/python -m pipelines.run_containers --workdir $(CONTAINER_DEMO_DIR) $(CONTAINER_DEMO_ARGS)

submit: | $(VENV)/.installed ## compile with REGISTRY/TAG, upload and run (RUN_CONFIG=run.yaml, SUBMIT_ARGS=--wait)
	REGISTRY=$(REGISTRY) TAG=$(TAG) $(BIN)/python -m pipelines.submit $(if $(RUN_CONFIG),--config $(RUN_CONFIG)) $(SUBMIT_ARGS)
