# Each target sets up .venv itself, so a fresh clone needs nothing but python3.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo demo-model bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

test: $(STAMP)
	.ci/ensure-browser
	$(PYTHON) -m pytest

demo: $(STAMP)
	$(PYTHON) -m ui.demo

# The performance tables of docs/performance.md (about 40 minutes on 2 CPU cores, 26 more for OCR and text search, 4 for serving, 18 for ONNX and students).
bench: $(STAMP)
	$(PYTHON) -m bench.startup
	$(PYTHON) -m bench.query_latency
	$(PYTHON) -m bench.onnx_text
	$(PYTHON) -m bench.distill
	$(PYTHON) -m bench.build_throughput
	$(PYTHON) -m bench.index_types
	$(PYTHON) -m bench.store
	$(PYTHON) -m bench.build_memory
	$(PYTHON) -m bench.ocr
	$(PYTHON) -m bench.ocr_build
	$(PYTHON) -m bench.text_search
	$(PYTHON) -m bench.serve

# Retrain the shipped demo model (about 14 minutes on 2 CPU cores) and re-measure it.
demo-model: $(STAMP)
	$(PYTHON) -m train.demo train --device cpu
