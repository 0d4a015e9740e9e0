#!/usr/bin/env bash
# Lints the two contracts of the service:
#   - the proto, with buf (buf.yaml: STANDARD and COMMENTS), and its format;
#   - the HTTP API's OpenAPI document, as the binary generates it, with
#     Redocly CLI (redocly.yaml: recommended-strict).
# Both tools are pinned in scripts/tools/package-lock.json and installed from
# the npm registry into target/tools/node (Node.js and npm come from
# scripts/install-deps.sh test).
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${STOCKLOCK_TOOLS:-target/tools}/node"
if ! cmp -s scripts/tools/package-lock.json "$tools/package-lock.json" \
  || [ ! -x "$tools/node_modules/.bin/buf" ] || [ ! -x "$tools/node_modules/.bin/redocly" ]; then
  mkdir -p "$tools"
  cp scripts/tools/package.json scripts/tools/package-lock.json "$tools/"
  # --ignore-scripts: buf's binary comes as an optional dependency for the
  # platform; its install script only checks for it.
  npm ci --prefix "$tools" --ignore-scripts --no-audit --no-fund --loglevel=error
fi
bin="$tools/node_modules/.bin"

"$bin/buf" lint
"$bin/buf" format --diff --exit-code
# Once there is a release, the proto must stay wire- and source-compatible
# with it (buf.yaml's `breaking` rules, FILE); until then there is nothing to
# compare with.
release=$(git tag --list 'v[0-9]*' --sort=-v:refname | head -n 1)
if [ -n "$release" ]; then
  "$bin/buf" breaking --against ".git#tag=$release"
else
  echo "lint-contract: no release tag (v*) yet, so no breaking-change check"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
${CARGO:-cargo} run -q --bin stocklock -- openapi >"$work/openapi.json"
# Redocly prints a banner about Node.js releases; only its findings matter.
if ! report=$(REDOCLY_TELEMETRY=off "$bin/redocly" lint --config redocly.yaml --format=stylish "$work/openapi.json" 2>&1); then
  grep -v '[║╔╚]' <<<"$report" >&2
  echo "lint-contract: the OpenAPI document fails redocly lint (above)" >&2
  exit 1
fi
echo "lint-contract: the proto and the OpenAPI document pass"
