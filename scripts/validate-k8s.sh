#!/usr/bin/env bash
# Validates the Kubernetes manifests in k8s/ against the Kubernetes schemas
# (kubernetes-validate from PyPI, in a private virtualenv), strictly: unknown
# fields fail. With kustomize or kubectl on the PATH, the built base, every
# overlay and both Redis setups (k8s/redis/*) are validated as they would be
# applied; without, each complete manifest of them is validated on its own.
#
# ServiceMonitor and PrometheusRule are Prometheus Operator CRDs with no
# published schema here: they are taken out of what kubernetes-validate sees
# and reported as skipped, not failed. The PrometheusRule is checked instead:
# its shape here (apiVersion, kind, spec.groups of named groups of rules,
# each a record or an alert with an expr), its rules by promtool (make
# monitoring, on monitoring/alerts.yaml).
#
# k8s/monitoring/prometheusrule.yaml is generated from monitoring/alerts.yaml,
# the one source of the rules: this fails while the committed file differs
# from what alerts.yaml makes, and `validate-k8s.sh --write` regenerates it.
set -euo pipefail
cd "$(dirname "$0")/.."

write=false
case "${1:-}" in
  --write) write=true ;;
  "") ;;
  *) echo "usage: $0 [--write]   (--write: regenerate k8s/monitoring/prometheusrule.yaml)" >&2; exit 2 ;;
esac

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

# Python (with PyYAML, a dependency of kubernetes-validate) for two steps:
#   rule SRC OUT check|write: the PrometheusRule from alerts.yaml, compared
#     with (or written to) OUT;
#   crds BUILT CORE: the documents of BUILT that are not Prometheus Operator
#     kinds go to CORE, for kubernetes-validate; the others are checked here
#     (PrometheusRule) or only named (ServiceMonitor).
py=$(cat <<'PY'
import difflib, sys, yaml

HEADER = """\
# GENERATED from monitoring/alerts.yaml by scripts/validate-k8s.sh: do not
# edit. Change alerts.yaml (promtool checks and tests it there), then run
#   ./scripts/validate-k8s.sh --write
# `make k8s` fails while this file differs from what alerts.yaml makes.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: stocklock
spec:
"""

def check_rule(doc, where):
    """The PrometheusRule's shape; the rules themselves are promtool's."""
    def fail(msg):
        sys.exit(f"validate-k8s: {where}: {msg}")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1" or doc.get("kind") != "PrometheusRule":
        fail("not a monitoring.coreos.com/v1 PrometheusRule")
    if not (doc.get("metadata") or {}).get("name"):
        fail("metadata.name missing")
    spec = doc.get("spec")
    if not isinstance(spec, dict) or set(spec) - {"groups"}:
        fail("spec must hold groups only")
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        fail("spec.groups must be a non-empty list")
    for g in groups:
        if not isinstance(g, dict) or not isinstance(g.get("name"), str):
            fail(f"a group without a name: {g!r:.80}")
        rules = g.get("rules")
        if not isinstance(rules, list) or not rules:
            fail(f"group {g['name']}: rules must be a non-empty list")
        for r in rules:
            kinds = [k for k in ("record", "alert") if k in r]
            if len(kinds) != 1 or not isinstance(r.get("expr"), (str, int, float)):
                fail(f"group {g['name']}: each rule needs one of record/alert and an expr: {r!r:.80}")

def rule(src, out, mode):
    text = open(src).read()
    # alerts.yaml indented under spec:, comments and all, so the generated
    # file reads like its source. Every line moves by two spaces, so block
    # scalars (expr: |) keep their content.
    body = "".join("  " + line if line.strip() else line for line in text.splitlines(True))
    generated = HEADER + body
    doc = yaml.safe_load(generated)
    if doc["spec"] != yaml.safe_load(text):
        sys.exit(f"validate-k8s: {src} does not survive indentation under spec: (a --- or a tab?)")
    check_rule(doc, out)
    try:
        committed = open(out).read()
    except FileNotFoundError:
        committed = ""
    if committed == generated:
        print(f"validate-k8s: {out} matches {src}")
    elif mode == "write":
        open(out, "w").write(generated)
        print(f"validate-k8s: wrote {out} from {src}")
    else:
        sys.stdout.writelines(list(difflib.unified_diff(
            committed.splitlines(True), generated.splitlines(True), out, f"made from {src}"))[:40])
        sys.exit(f"validate-k8s: {out} differs from what {src} makes: "
                 "run ./scripts/validate-k8s.sh --write, and commit both")

def crds(built, core):
    docs = [d for d in yaml.safe_load_all(open(built)) if d]
    keep = []
    for d in docs:
        if str(d.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
            name = f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
            if d.get("kind") == "PrometheusRule":
                check_rule(d, name)
                print(f"validate-k8s:   {name}: a CRD without a schema here; its shape checked, its rules by promtool")
            else:
                print(f"validate-k8s:   {name}: a CRD without a schema here, skipped")
        else:
            keep.append(d)
    yaml.safe_dump_all(keep, open(core, "w"), sort_keys=False)

{"rule": rule, "crds": crds}[sys.argv[1]](*sys.argv[2:])
PY
)
run_py() { "$venv/bin/python" -c "$py" "$@"; }

run_py rule monitoring/alerts.yaml k8s/monitoring/prometheusrule.yaml "$($write && echo write || echo check)"

built=$(mktemp -d)
trap 'rm -rf "$built"' EXIT
if command -v kustomize >/dev/null; then
  build() { kustomize build "$1"; }
elif command -v kubectl >/dev/null; then
  build() { kubectl kustomize "$1"; }
else
  build() { return 1; }
fi
for dir in k8s/base k8s/overlays/*/ k8s/redis/*/; do
  dir=${dir%/}
  name=${dir//\//_}   # k8s_overlays_cluster and k8s_redis_cluster differ
  if build "$dir" > "$built/$name.yaml" 2>"$built/$name.err"; then
    echo "validate-k8s: $dir (built with kustomize)"
    run_py crds "$built/$name.yaml" "$built/$name.core.yaml"
    validate "$built/$name.core.yaml"
  else
    [ -s "$built/$name.err" ] && { cat "$built/$name.err" >&2; exit 1; }
    echo "validate-k8s: $dir (no kustomize: each complete manifest)"
    for f in $(sed -n 's/^  - \([a-z-]*\.yaml\)$/\1/p' "$dir/kustomization.yaml"); do
      validate "$dir/$f"
    done
  fi
done
echo "validate-k8s: every manifest is valid"
