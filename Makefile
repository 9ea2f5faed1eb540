# gensweep front door. Every target creates the virtualenv on first use.
#   make sweep-wd PROFILE=quick     # the weight-decay study, quick version (times: README's study table)
#   make test                       # the whole test suite (its time: README)
#   make test-fast                  # the unit tests, without Ray studies (about 3 minutes)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?=
RESULTS ?= results
ARGS ?=
PACK ?=
profile_flag = $(if $(PROFILE),--profile $(PROFILE))$(if $(PACK), --pack $(PACK))
study_name = $(1)$(if $(PROFILE),-$(PROFILE))

.PHONY: setup sweep sweep-batch sweep-function report estimate validate test test-fast bench clean-venv help submit job-status job-logs job-stop cluster-up cluster-down

help:
	@echo "make sweep-wd [PROFILE=quick|smoke]    weight decay on an overparameterized CNN"
	@echo "make sweep-lr [PROFILE=quick|smoke]    Optuna search over the learning rate of an MLP"
	@echo "make sweep-NAME [PROFILE=...]           sweeps/NAME.yaml (see the README's study list)"
	@echo "make sweep SPEC=sweeps/x.yaml [PROFILE=...]   any spec (e.g. examples/own.yaml: your own plugins)"
	@echo "make sweep-NAME PACK=8                  train up to 8 grid cells per trial, vectorized (docs/specs.md)"
	@echo "make report STUDY=wd-quick              rebuild a study's tables and figures"
	@echo "make estimate SPEC=sweeps/x.yaml [PROFILE=...]   trials, FLOPs, memory and time before a run"
	@echo "make validate                           check every spec and profile (sweeps/ and examples/)"
	@echo "make cluster-up [WORKERS=1 CPUS=1]      a local multi-node Ray cluster (head + workers on 127.0.0.1)"
	@echo "make submit SPEC=sweeps/x.yaml [PROFILE=...] [RAY_ADDRESS=http://HEAD:8265] [STORAGE=DIR|URI]"
	@echo "make job-status | job-logs JOB=... | job-stop JOB=...   the cluster's jobs"
	@echo "make cluster-down                       stop the local cluster"
	@echo "make docker-build | docker-run SPEC=... [PROFILE=...] | test-docker   the Docker image (docs/operations.md)"
	@echo "make test                               run the whole test suite"
	@echo "make test-fast                          the unit tests, without Ray studies (about 3 minutes)"
	@echo "make bench                              the benchmarks (bench/results.json, docs/performance.md)"

setup: $(VENV)/.installed

# Re-install when the dependencies change. torch/torchvision are pinned exactly
# (a CUDA build that also runs on CPU, about 5.5 GB).
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else "gensweep needs Python 3.11, 3.12 or 3.13; set PYTHON=/path/to/python3.12")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing gensweep and its pinned dependencies into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

sweep: setup
	@test -n "$(SPEC)" || { echo "usage: make sweep SPEC=sweeps/NAME.yaml [PROFILE=quick|smoke]"; exit 2; }
	$(PY) -m sweeps run $(SPEC) $(profile_flag) --results $(RESULTS) $(ARGS)

# make sweep-NAME runs sweeps/NAME.yaml, dashes read as underscores
# (sweep-random-labels -> sweeps/random_labels.yaml).
sweep-%: setup
	$(PY) -m sweeps run sweeps/$(subst -,_,$*).yaml $(profile_flag) --results $(RESULTS) $(ARGS)

sweep-batch: sweep-batch-size
sweep-function: sweep-function-fit

report: setup
	@test -n "$(STUDY)" || { echo "usage: make report STUDY=NAME (a folder under $(RESULTS)/, e.g. wd-quick)"; exit 2; }
	$(PY) -m sweeps report $(RESULTS)/$(STUDY)

estimate: setup
	@test -n "$(SPEC)" || { echo "usage: make estimate SPEC=sweeps/NAME.yaml [PROFILE=quick|smoke|cpu]"; exit 2; }
	$(PY) -m sweeps estimate $(SPEC) $(profile_flag)

validate: setup
	$(PY) -m sweeps validate sweeps/*.yaml examples/*.yaml
	$(PY) -m sweeps validate sweeps/*.yaml examples/*.yaml --profile quick
	$(PY) -m sweeps validate sweeps/*.yaml examples/*.yaml --profile smoke

# A Ray cluster: submit a study as a Ray job (logs followed; ARGS=--no-wait to return).
# RAY_ADDRESS is the job server (dashboard) URL; the token comes from RAY_AUTH_TOKEN
# or ~/.ray/auth_token. STORAGE: where results land (shared path or s3://, gs://).
RAY_ADDRESS ?=
STORAGE ?=
WORKERS ?= 1
CPUS ?= 1
address_flag = $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS))

submit: setup
	@test -n "$(SPEC)" || { echo "usage: make submit SPEC=sweeps/NAME.yaml [PROFILE=...] [RAY_ADDRESS=http://HEAD:8265]"; exit 2; }
	$(PY) -m sweeps submit $(SPEC) $(profile_flag) $(address_flag) $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

job-status: setup
	$(PY) -m sweeps jobs $(address_flag)

job-logs: setup
	@test -n "$(JOB)" || { echo "usage: make job-logs JOB=raysubmit_... (see make job-status)"; exit 2; }
	$(PY) -m sweeps logs $(JOB) $(address_flag) $(ARGS)

job-stop: setup
	@test -n "$(JOB)" || { echo "usage: make job-stop JOB=raysubmit_... (see make job-status)"; exit 2; }
	$(PY) -m sweeps stop $(JOB) $(address_flag)

cluster-up: setup
	$(PY) -m sweeps cluster up --workers $(WORKERS) --cpus $(CPUS)

cluster-down: setup
	$(PY) -m sweeps cluster down

test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not study" $(ARGS)

# Benchmarks (bench/): gensweep vs a notebook-style loop, the machine's matmul peak,
# sweep overhead, concurrency, memory, packed trials. Wants an otherwise idle machine.
bench: setup
	$(PY) -m bench $(ARGS)

clean-venv:
	rm -rf $(VENV)

# The Docker image: docker-build, docker-run, test-docker, ... (after every target
# above, so `help` stays the default).
include docker/docker.mk
