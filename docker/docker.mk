# The image for reproducible runs and Ray cluster nodes. Included by the Makefile
# (`include docker/docker.mk`); also usable alone: make -f docker/docker.mk TARGET.
#
#   make docker-build [BASE_IMAGE=...] [DOCKER_BUILD_ARGS='--build-arg TORCH_INDEX_URL=...']
#   make docker-run SPEC=sweeps/wd.yaml PROFILE=quick [RESULTS=results]
#   make test-docker          # local base image, real build, smoke study in a container (minutes)
#   make docker-base          # the local stand-in base image (debootstrap + podman import)
#   make docker-lock          # refresh docker/requirements.lock from the venv
#   make docker-clean         # remove the image and dangling build layers
#
# ENGINE is podman when installed, else docker. With podman and runc installed,
# CONTAINERS_CONF defaults to docker/containers.conf (runc, cgroupfs, no ulimit
# override: what the development machines need; see the comments there).

ENGINE ?= $(if $(shell command -v podman 2>/dev/null),podman,docker)
IMAGE_NAME ?= gensweep
# The image is tagged with the project's version (pyproject.toml), which the KubeRay
# and cluster-launcher configs name too (tests/test_docker_configs.py checks).
GENSWEEP_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE ?= $(IMAGE_NAME):$(GENSWEEP_VERSION)
# Empty: the Dockerfile's default, python:3.11-slim-bookworm.
BASE_IMAGE ?=
BASE_IMAGE_LOCAL ?= localhost/debian-py:bookworm
DOCKER_BUILD_ARGS ?=
DOCKER_RUN_ARGS ?=
# Ray keeps its object store in /dev/shm (it wants 30% of RAM there, else it falls back
# to slower /tmp); container engines give 64 MB by default. tmpfs takes memory only as used.
SHM_SIZE ?= 8g
RESULTS ?= results
PROFILE ?=
ARGS ?=
PY ?= .venv/bin/python
# Recorded in each trial's provenance (the image has no .git).
GIT_COMMIT ?= $(shell c=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null && echo $$c || echo $$c+dirty; } || echo unknown)

ifeq ($(notdir $(ENGINE)),podman)
ifeq ($(origin CONTAINERS_CONF),undefined)
ifneq ($(shell command -v runc 2>/dev/null),)
export CONTAINERS_CONF := $(CURDIR)/docker/containers.conf
endif
endif
# The development machines' pip takes torch & co. from local folders (pip config list)
# instead of downloading ~3 GB; podman can bind-mount them into the build's RUN steps.
LOCAL_PIP_DIRS ?= $(if $(wildcard /opt/pypi),$(wildcard /etc/pip.conf /etc/xdg/pip /opt/pypi /opt/pypi-more /opt/wheels))
build_mounts = $(foreach d,$(LOCAL_PIP_DIRS),-v $(d):$(d):ro)
# Results on the host belong to whoever runs make: rootless podman maps your uid into
# the container (keep-id); as root, the container runs as DOCKER_USER.
rootless := $(if $(filter 0,$(shell id -u)),,yes)
endif
# The container's uid:gid. Default: yours, so results/ stays yours (root on the host:
# root in the container). DOCKER_USER=1000:1000 runs as the image's own user, gensweep,
# which then needs a results folder it can write.
DOCKER_USER ?= $(shell id -u):$(shell id -g)
user_flags = $(if $(rootless),--userns=keep-id,--user $(DOCKER_USER))

.PHONY: docker-build docker-run test-docker docker-base docker-lock docker-clean

docker-build:
	$(ENGINE) build -f docker/Dockerfile -t $(IMAGE) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  --build-arg GIT_COMMIT=$(GIT_COMMIT) $(build_mounts) $(DOCKER_BUILD_ARGS) .

# The spec's folder is mounted (read only) from this checkout, so a spec's plugin
# files and .npz datasets beside it are found; edit them and rerun without
# rebuilding. gensweep's own code and MNIST are the image's.
docker-run:
	@test -n "$(SPEC)" || { echo "usage: make docker-run SPEC=sweeps/NAME.yaml [PROFILE=quick|smoke] [RESULTS=results]"; exit 2; }
	@test -f "$(SPEC)" || { echo "error: $(SPEC): no such spec file"; exit 2; }
	@mkdir -p $(RESULTS)
	$(ENGINE) run --rm --shm-size=$(SHM_SIZE) $(user_flags) \
	  -v $(abspath $(RESULTS)):/results -v $(abspath $(dir $(SPEC))):/specs:ro \
	  $(DOCKER_RUN_ARGS) $(IMAGE) run /specs/$(notdir $(SPEC)) $(if $(PROFILE),--profile $(PROFILE)) --results /results $(ARGS)

test-docker:
	bash docker/test-docker.sh

docker-base:
	bash docker/build-base-image.sh $(BASE_IMAGE_LOCAL)

docker-lock:
	$(PY) docker/lock.py

docker-clean:
	-$(ENGINE) rmi $(IMAGE)
	$(ENGINE) image prune -f
