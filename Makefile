# esper-exp developer commands. `make test` and `make demo` work on a fresh clone (Python >= 3.11).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0; an unpinned torch would pull a multi-GB CUDA build.
# On a GPU machine: make setup TORCH="torch==2.13.0 --index-url <your CUDA wheel index>" (or keep your own torch).
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test test-slow demo sweep-smoke clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

test: setup ## the test suite (fast tests; a few minutes on 2 cores)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

demo: setup ## a small default training job: CartPole-v1, 100k steps, wandb offline
	$(VENV)/bin/esper-train env=cartpole ppo.total_timesteps=100000 tracking.progress=on

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
