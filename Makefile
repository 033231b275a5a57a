# The two set-up commands of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat constraints.txt pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test bench-vault bench-webhooks bench-search bench-binding bench-chat-import bench-decide \
	bench-outbox-decide bench-dispatch

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

serve: $(STAMP)
	$(BIN)/strongroom serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n auto --dist loadscope

bench-vault: $(STAMP)
	$(BIN)/python -m tests.bench.vault

bench-webhooks: $(STAMP)
	$(BIN)/python -m tests.bench.webhooks

bench-search: $(STAMP)
	$(BIN)/python -m tests.bench.search

bench-binding: $(STAMP)
	$(BIN)/python -m tests.bench.binding

bench-chat-import: $(STAMP)
	$(BIN)/python -m tests.bench.chat_import

bench-decide: $(STAMP)
	$(BIN)/python -m tests.bench.decide

bench-outbox-decide: $(STAMP)
	$(BIN)/python -m tests.bench.outbox_decide

bench-dispatch: $(STAMP)
	$(BIN)/python -m tests.bench.dispatch
