# Shortcuts for the scripts CI and the README use.
.PHONY: setup run test check bench
setup:
	scripts/setup
run:
	scripts/run
test:
	scripts/test
check:
	.venv/bin/ruff check gateway tests bench && .venv/bin/ruff format --check gateway tests bench && .venv/bin/mypy gateway
bench:
	scripts/setup && .venv/bin/python -m bench $(BENCH_ARGS)
