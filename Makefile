# Set-up and the two entry points of a fresh clone:
#   make demo   — create .venv, install everything, run the main job
#   make test   — create .venv, install everything, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup browser demo test organisms clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so a CPU machine takes the CPU build and never pulls a CUDA one
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# The main job: a real investigation of the default model, gemma-3-270m (offline), then its report
demo: $(STAMP)
	$(VENV)/bin/sleuth ask "indirect object identification" --workspace sleuth-workspace
	$(VENV)/bin/sleuth report latest --workspace sleuth-workspace

# Debian's Chromium and its driver, for the browser tests of the reports (never a downloaded browser)
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	fi

test: $(STAMP) browser
	SLEUTH_REQUIRE_BROWSER=1 $(PY) -m pytest -q --durations=15

# Retrain both shipped organisms from their seed (~25 min on 2 cores); overwrites evals/organisms/
organisms: $(STAMP)
	$(PY) -m evals.organisms.recipe.build_all --seed 0

clean:
	rm -rf $(VENV)
