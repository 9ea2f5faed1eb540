# gensweep front door. Every target creates the virtualenv on first use.
#   make sweep-wd PROFILE=quick     # the weight-decay study, 3-minute version
#   make test                       # the test suite (about 5 minutes on 2 cores)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?=
RESULTS ?= results
ARGS ?=
profile_flag = $(if $(PROFILE),--profile $(PROFILE))
study_name = $(1)$(if $(PROFILE),-$(PROFILE))

.PHONY: setup sweep sweep-batch report validate test clean-venv help

help:
	@echo "make sweep-wd [PROFILE=quick|smoke]    weight decay on an overparameterized CNN"
	@echo "make sweep-lr [PROFILE=quick|smoke]    Optuna search over the learning rate of an MLP"
	@echo "make sweep-NAME [PROFILE=...]           sweeps/NAME.yaml (see the README's study list)"
	@echo "make sweep SPEC=sweeps/x.yaml [PROFILE=...]   any spec"
	@echo "make report STUDY=wd-quick              rebuild a study's tables and figures"
	@echo "make validate                           check every spec and profile"
	@echo "make test                               run the tests"

setup: $(VENV)/.installed

# Re-install when the dependencies change. torch/torchvision are pinned exactly
# (a CUDA build that also runs on CPU, about 5.5 GB).
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "gensweep needs Python 3.11; set PYTHON=/path/to/python3.11")'
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

report: setup
	@test -n "$(STUDY)" || { echo "usage: make report STUDY=NAME (a folder under $(RESULTS)/, e.g. wd-quick)"; exit 2; }
	$(PY) -m analysis report $(RESULTS)/$(STUDY)

validate: setup
	$(PY) -m sweeps validate sweeps/*.yaml
	$(PY) -m sweeps validate sweeps/*.yaml --profile quick
	$(PY) -m sweeps validate sweeps/*.yaml --profile smoke

test: setup
	$(PY) -m pytest -q $(ARGS)

clean-venv:
	rm -rf $(VENV)
