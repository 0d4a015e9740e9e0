# The two commands of the README: `make run` and `make test`.
# Both install what a fresh Debian/Ubuntu machine lacks first.

CARGO ?= cargo
ARGS ?=

.PHONY: deps test-deps run test lint contract monitoring k8s fuzz python-example build bench loadtest

deps:
	./scripts/install-deps.sh run

test-deps:
	./scripts/install-deps.sh test

## Run the service: gRPC on 127.0.0.1:50051, HTTP on 127.0.0.1:8080 (with its
## own private Redis unless STOCKLOCK_REDIS_URL or ARGS="--redis-url ..." names one).
run: deps
	$(CARGO) run --release -- serve $(ARGS)

# The suites of the core behaviour, run a second time with each test on its
# own three-primary Redis Cluster (the others stop, pause or replicate one
# redis-server, which a cluster test does in tests/cluster.rs). --workspace
# keeps the features of the first run, so nothing is built twice.
CLUSTER_SUITES = locking batch admin idempotency expiry events concurrency errors ingest invariants linearizability model sessions transfer

## Formatting, lints, docs, the contract's linters, the alert rules, the Kubernetes manifests, every
## test against real redis-servers (once on one Redis, and the core suites
## again on Redis Cluster), and the Python example against the real service.
## The fuzz targets run apart (`make fuzz`): their build is a second build of
## the whole crate, over three minutes of CI's twenty.
test: test-deps lint contract monitoring k8s
	$(CARGO) test --workspace --all-targets
	STOCKLOCK_TEST_REDIS=cluster $(CARGO) test --workspace $(addprefix --test ,$(CLUSTER_SUITES))
	./scripts/python-example.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS=-Dwarnings $(CARGO) doc --no-deps

## The proto (buf lint, buf format) and the OpenAPI document (Redocly).
contract:
	./scripts/lint-contract.sh

monitoring:
	promtool check rules monitoring/alerts.yaml
	promtool test rules monitoring/alerts.test.yaml

## Every manifest in k8s/ against the Kubernetes schemas.
k8s:
	./scripts/validate-k8s.sh

## examples/python/checkout.py (a session, a lock in it, commit) against a
## redis-server and the service, with stubs made from the proto.
python-example:
	./scripts/python-example.sh

## Every fuzz target for FUZZ_SECONDS (default 10) each.
fuzz:
	./scripts/fuzz.sh

build: deps
	$(CARGO) build --release

## The criterion benchmarks of the hot paths (needs redis-server).
bench: deps
	$(CARGO) bench --bench hot_paths

## The load-test tool; see docs/performance.md for the runs.
loadtest: deps
	$(CARGO) build --release --workspace
	./target/release/loadtest run --spawn --scenario order --rate 2000 --duration 10s --redis-benchmark --json target/loadtest.json --hdr target/loadtest.hgrm --plot target/loadtest.svg
