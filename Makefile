.PHONY: setup demo test lint bench
setup:
	scripts/setup.sh
demo:
	scripts/demo.sh
test:
	scripts/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports --no-cache
bench: setup
	.venv/bin/python -m examples.bbc --no-serve
	.venv/bin/python -m benchmarks.storage
	.venv/bin/python -m benchmarks.layout
	.venv/bin/python -m benchmarks.indexing --model .cache/bbc/model-300steps --model smollm2 --n 96 --batch-size 8
	.venv/bin/python -m benchmarks.synthetic --source .cache/bbc/bbc.h5 --n 1000000 --out .cache/syn-1m.h5
	.venv/bin/python -m benchmarks.serving --index .cache/bbc/bbc.h5 --model .cache/bbc/model-300steps --synthetic .cache/syn-1m.h5
	.venv/bin/python -m benchmarks.scaling
	.venv/bin/python -m benchmarks.quality --subsets 64
	.venv/bin/python -m benchmarks.explain --synthetic .cache/syn-1m.h5
	.venv/bin/python -m benchmarks.report
