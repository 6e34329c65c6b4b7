# The two commands of the README. Both do all set-up on a fresh machine first.
.PHONY: demo test setup check gpu-check

setup:
	@bash scripts/setup.sh

## Train vanilla and LightThinker tiny models and compare them (the embedded demo).
demo: setup
	cargo run --release --bin lightthinker -- demo --out out/demo

## The whole test suite.
test: setup
	cargo test --workspace --all-targets
	LD_LIBRARY_PATH=$(CURDIR)/.venv/libtorch/lib:$$LD_LIBRARY_PATH cargo test --workspace --doc

## What CI runs besides `make test`.
check:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

## CUDA checks (exits 0 with a message when there is no GPU).
gpu-check: setup
	bash scripts/gpu-check.sh
