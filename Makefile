# Two entry points (see README): `make demo` and `make test`. Both create the environment first and are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test env benchmark

env: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	# opencv-contrib replaces opencv-python-headless (both install cv2/): drop the old one first, never after
	$(PY) -m pip show -q opencv-contrib-python-headless 2>/dev/null || $(PY) -m pip uninstall -q -y opencv-python-headless
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/tune.py

test: $(STAMP)
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) pipelines/benchmark.py
