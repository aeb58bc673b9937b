# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both bootstrap .venv (and the sandbox's system packages) by themselves.
SHELL := /bin/bash
export RAY_AUTH_MODE ?= disabled
export LITELLM_LOCAL_MODEL_COST_MAP ?= True
VENV := .venv/bin

.PHONY: bootstrap demo test bench clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/python -m rlm_ray.demo

test: bootstrap
	$(VENV)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf .venv .demo .bench .pytest_cache
