# The two commands of the README:  `make run`  and  `make test`.
# Each one sets up .venv from this repository's own files first (only when pyproject.toml changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# No HF_HUB_OFFLINE here: `make run` fetches hub models when there is a network (the bundled
# default model needs none). The tests are offline by themselves (tests/conftest.py).
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup browser docker run test lint bench-train bench-serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on disk; unpinned, pip would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The dashboard test opens the page in Debian's chromium: installed here when missing and apt-get
# can (root); otherwise that one test is skipped and says why. fonts-noto-cjk draws the Hangul of
# the Korean datasets in its screenshots (without a Korean font it shows as empty boxes).
browser:
	@command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi "Noto Sans CJK" || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and fonts-noto-cjk (Debian) for the dashboard test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk >/dev/null; } \
	      || echo "could not install chromium: the dashboard browser test will be skipped"; \
	  else \
	    echo "chromium or fonts-noto-cjk is missing and apt-get cannot install it here: the dashboard browser test is skipped without chromium, and its screenshots show Hangul as boxes without the fonts"; \
	  fi; }

# The compose stack test runs the stack in Debian's Docker engine (docker.io, docker-compose; and
# debootstrap, to make a Debian base image where none can be pulled): installed here when missing
# and apt-get can (root); otherwise that one test is skipped and says why. The test starts dockerd
# itself when none runs.
docker:
	@{ [ -x /usr/bin/docker ] && command -v docker-compose >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing docker.io, docker-compose and debootstrap (Debian) for the compose stack test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null; } \
	      || echo "could not install Docker: the compose stack test will be skipped"; \
	  else \
	    echo "Docker is missing and apt-get cannot install it here: the compose stack test will be skipped"; \
	  fi; }

run: setup
	$(BIN)/tuneserve up

test: setup browser docker
	$(BIN)/ruff check app core worker tests bench migrations examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

bench-train: setup
	$(BIN)/python bench/train_bench.py

bench-serve: setup
	$(BIN)/python bench/serve_bench.py

clean:
	rm -rf var models_store/* .pytest_cache .mypy_cache .ruff_cache
