# The two commands: `make book` (run the pipeline, build the book) and `make test` (the test suite).
PROFILE ?= quick
# DATA_ROOT=/data: a folder with datasets.yaml naming real manifests (book/data.md); runs/<profile>-real/
DATA_ROOT ?=
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)
# Threads: the machine kind has 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: book test venv assets js pipeline html clean-book

venv:
	@bash scripts/ensure_venv.sh

js:
	@bash scripts/vendor_js.sh

assets: venv
	@$(PY) -m avsl_core.data.fetch --dest data/assets

pipeline: venv assets
	@$(PY) -m avsl_core.pipeline --profile $(PROFILE) $(if $(DATA_ROOT),--data-root "$(DATA_ROOT)")

html: venv js
	@$(PY) -m avsl_core.book_build --profile $(PROFILE)

book: pipeline html

test: venv js assets
	@$(PY) -m pytest tests -q -p no:cacheprovider

clean-book:
	rm -rf _build book/generated
