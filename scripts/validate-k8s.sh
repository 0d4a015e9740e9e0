#!/usr/bin/env bash
# Validates the Kubernetes manifests in k8s/ against the Kubernetes schemas
# (kubernetes-validate from PyPI, in a private virtualenv), strictly: unknown
# fields fail. With kustomize or kubectl on the PATH, the built base and every
# overlay are validated as they would be applied; without, each complete
# manifest of the base and the overlays is validated on its own.
# ServiceMonitor is a Prometheus Operator CRD with no published schema here:
# it is reported as skipped, not failed.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=(1.30.0 1.37.0)   # oldest supported (sleep preStop hooks) and current
venv="${STOCKLOCK_TOOLS:-target/tools}/kubernetes-validate"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  # python3 and its venv module come from scripts/install-deps.sh test.
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate
fi
validate() {
  for v in "${versions[@]}"; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$@"
  done
}

built=$(mktemp -d)
trap 'rm -rf "$built"' EXIT
if command -v kustomize >/dev/null; then
  build() { kustomize build "$1"; }
elif command -v kubectl >/dev/null; then
  build() { kubectl kustomize "$1"; }
else
  build() { return 1; }
fi
for dir in k8s/base k8s/overlays/*/; do
  name=$(basename "$dir")
  if build "$dir" > "$built/$name.yaml" 2>"$built/$name.err"; then
    echo "validate-k8s: $dir (built with kustomize)"
    validate "$built/$name.yaml"
  else
    [ -s "$built/$name.err" ] && { cat "$built/$name.err" >&2; exit 1; }
    echo "validate-k8s: $dir (no kustomize: each complete manifest)"
    for f in $(sed -n 's/^  - \([a-z-]*\.yaml\)$/\1/p' "$dir/kustomization.yaml"); do
      validate "$dir/$f"
    done
  fi
done
echo "validate-k8s: every manifest is valid"
