# The two commands of the README: `make run` and `make test`.
# Both install what a fresh Debian/Ubuntu machine lacks first.

CARGO ?= cargo
ARGS ?=

.PHONY: deps run test lint build

deps:
	./scripts/install-deps.sh

## Run the service on 127.0.0.1:50051 (with its own private Redis unless
## STOCKLOCK_REDIS_URL or ARGS="--redis-url ..." names one).
run: deps
	$(CARGO) run --release -- serve $(ARGS)

## Formatting, lints, docs, and every test against a real redis-server.
test: deps lint
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS=-Dwarnings $(CARGO) doc --no-deps

build: deps
	$(CARGO) build --release
