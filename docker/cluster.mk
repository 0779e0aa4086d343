# Cluster targets, included by the Makefile (`include docker/cluster.mk`): build and push the stage images,
# submit a run. Building needs a Docker engine with BuildKit (a workstation or CI runner, not the dev VMs).
#   make build                          every stage image, tagged $(REGISTRY)/kfp-distill-<stage>:$(TAG)
#   make build-train PLATFORM=linux/arm64 DOCKER_BUILD_ARGS="--build-arg TORCH_CUDA_ARCH_LIST=9.0"
#   make push                           push every image (after docker login)
#   make submit RUN_CONFIG=run.yaml SUBMIT_ARGS="--wait --experiment nightly"
# Image names come from pipelines/images.py, the one place the compiled pipeline takes them from too, so
# `make build push submit` with the same REGISTRY and TAG always runs the images it built.
STAGES := download teacher train merge eval
PLATFORM ?= linux/amd64
DOCKER ?= docker
DOCKER_BUILD_ARGS ?=
RUN_CONFIG ?=
SUBMIT_ARGS ?=
image = $(shell REGISTRY=$(REGISTRY) TAG=$(TAG) $(BIN)/python -m pipelines.images $(1))

.PHONY: build push submit $(STAGES:%=build-%) $(STAGES:%=push-%)

build: $(STAGES:%=build-%) ## build every stage image (needs a Docker engine)

push: $(STAGES:%=push-%) ## push every stage image to REGISTRY

$(STAGES:%=build-%): build-%: | $(VENV)/.installed
	DOCKER_BUILDKIT=1 $(DOCKER) build --platform $(PLATFORM) --file docker/$*.Dockerfile \
		--build-arg VERSION=$(TAG) $(DOCKER_BUILD_ARGS) --tag $(call image,$*) .

$(STAGES:%=push-%): push-%: | $(VENV)/.installed
	$(DOCKER) push $(call image,$*)

submit: | $(VENV)/.installed ## compile with REGISTRY/TAG, upload and run (RUN_CONFIG=run.yaml, SUBMIT_ARGS=--wait)
	REGISTRY=$(REGISTRY) TAG=$(TAG) $(BIN)/python -m pipelines.submit $(if $(RUN_CONFIG),--config $(RUN_CONFIG)) $(SUBMIT_ARGS)
