#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each (default
# 10: the bounded run of `make test`). That bounded run builds unoptimized
# and without a sanitizer (FUZZ_FLAGS, default "--dev -s none"): the crate
# forbids unsafe code, so the targets look for panics and wrong answers, and
# the build takes a third of the time of an optimized AddressSanitizer one,
# which kept `make test` near CI's limit. Longer runs, by hand:
#   FUZZ_SECONDS=3600 FUZZ_FLAGS="-O" ./scripts/fuzz.sh   # an hour per target, optimized, ASan
#   RUSTC_BOOTSTRAP=1 cargo fuzz run decimal              # one target, until stopped
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-10}"
read -r -a flags <<<"${FUZZ_FLAGS:---dev -s none}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz build "${flags[@]}"
for target in $(cargo fuzz list); do
  echo "fuzz: $target for ${seconds}s"
  log="target/fuzz-$target.log"
  if ! cargo fuzz run "${flags[@]}" "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $target crashed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "DONE" "$log" || true
done
echo "fuzz: no target crashed"
