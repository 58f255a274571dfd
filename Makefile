# Two commands on a fresh machine: `make run` (service on the embedded default) and
# `make test` (the whole suite, on SQLite and on PostgreSQL).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
# FAISS: the GPU build where an NVIDIA GPU is visible, the CPU build otherwise
# (override with `make FAISS=faiss-cpu==1.15.1 ...`).
FAISS ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo faiss-gpu-cu12==1.14.1.post1 || echo faiss-cpu==1.15.1)

.PHONY: venv run test test-sqlite test-postgres bench eval clean

venv: $(STAMP)

# torch is pinned to the local CPU wheel (an unpinned torch pulls gigabytes of CUDA);
# packages that declare torch/torchaudio requirements are installed with --no-deps.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml scripts/strip_torchaudio_extension.py scripts/export_campplus_onnx.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt "$(FAISS)"
	$(PIP) install --no-deps -r requirements-nodeps.txt
	$(PY) scripts/strip_torchaudio_extension.py
	$(PIP) install --no-deps --no-build-isolation -e .
	# ONNX versions of the runtime model, derived from the installed GE2E weights (not committed)
	$(PY) scripts/export_ge2e_onnx.py >/dev/null
	# the CAM++ enrollment network on ONNX Runtime (same vectors, faster; not committed)
	$(PY) scripts/export_campplus_onnx.py >/dev/null
	touch $(STAMP)

run: venv
	$(VENV)/bin/nessa db upgrade
	$(VENV)/bin/nessa serve --host $(HOST) --port $(PORT) --with-worker

test: venv test-sqlite test-postgres

test-sqlite: venv
	NESSA_TEST_DATABASE=sqlite $(PY) -m pytest -q -p no:cacheprovider

# The database-facing tests again on PostgreSQL (the model-accuracy tests are
# database-agnostic and run once, above).
test-postgres: venv
	NESSA_TEST_DATABASE=postgresql NESSA_TEST_POSTGRES_URL=$(POSTGRES_URL) \
		$(PY) -m pytest -q -p no:cacheprovider -m "not models_only"

bench: venv
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) var
