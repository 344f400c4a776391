.PHONY: setup demo test lint bench
setup:
	scripts/setup.sh
demo:
	scripts/demo.sh
test:
	scripts/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
bench:
	.venv/bin/python -m benchmarks.layout && .venv/bin/python -m benchmarks.indexing
