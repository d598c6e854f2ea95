#!/usr/bin/env bash
# Lints and renders the inventory-mesh chart and validates every rendered manifest, offline:
#   1. helm lint --strict, with the default values and with each file in helm/test-values/;
#   2. helm template for each values set and each Kubernetes version in KUBE_VERSIONS;
#   3. kubernetes-validate --strict on every rendered manifest against that version's schemas;
#   4. scripts/check_chart_invariants.py: the objects are the ones the chart promises.
# Uses the tools `make tools` puts in .tools/; never skips a check. Exits non-zero on any failure.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$repo_root/helm/inventory-mesh"
test_values_dir="$repo_root/helm/test-values"
helm="$repo_root/.tools/bin/helm"
validate="$repo_root/.tools/bin/kubernetes-validate"
python="$repo_root/.tools/venv/bin/python"
release="ci"
# The oldest version the chart supports (Chart.yaml kubeVersion) and the newest whose schemas
# the pinned kubernetes-validate ships.
read -r -a kube_versions <<<"${KUBE_VERSIONS:-1.30.0 1.37.0}"
all_services="availability,reservation,sourcing,replenishment"

for tool in "$helm" "$validate" "$python"; do
  if [[ ! -x "$tool" ]]; then
    echo "helm-check: FAIL: $tool is missing; run \`make tools\` (scripts/install-tools.sh)" >&2
    exit 1
  fi
done

work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

failures=0
checks=0
pass() { checks=$((checks + 1)); printf '  ok   %s\n' "$*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); printf '  FAIL %s\n' "$*"; }

# run LOG COMMAND...: runs the command with its output in LOG, shown only when it fails.
run() {
  local log="$1"
  shift
  if "$@" >"$log" 2>&1; then
    return 0
  fi
  sed 's/^/       /' "$log"
  return 1
}

# Values sets: "label|values file (empty: defaults)|services expected|migrate job expected".
values_sets=("defaults||$all_services|yes")
values_sets+=("full|$test_values_dir/full.yaml|$all_services|yes")
values_sets+=("availability-only|$test_values_dir/availability-only.yaml|availability|no")

echo "helm-check: chart $(basename "$chart"), $("$helm" version --short), kubernetes-validate $("$validate" --version)"

for values_set in "${values_sets[@]}"; do
  IFS='|' read -r label values_file services job <<<"$values_set"
  values_args=()
  if [[ -n "$values_file" ]]; then
    values_args=(--values "$values_file")
  fi
  echo "helm-check: values: $label${values_file:+ (${values_file#"$repo_root"/})}"

  if run "$work_dir/lint.log" "$helm" lint --strict "$chart" "${values_args[@]}"; then
    pass "helm lint --strict"
  else
    fail "helm lint --strict"
  fi

  for kube_version in "${kube_versions[@]}"; do
    rendered="$work_dir/$label-$kube_version.yaml"
    if ! run "$work_dir/template.log" "$helm" template "$release" "$chart" "${values_args[@]}" \
      --kube-version "$kube_version" --output-dir "$work_dir/out-$label-$kube_version"; then
      fail "helm template --kube-version $kube_version"
      continue
    fi
    # One file per template; validate them all, and keep one concatenated copy for the invariants.
    mapfile -t manifests < <(find "$work_dir/out-$label-$kube_version" -name '*.yaml' -type f | sort)
    if [[ ${#manifests[@]} -eq 0 ]]; then
      fail "helm template --kube-version $kube_version rendered no manifest"
      continue
    fi
    for manifest in "${manifests[@]}"; do
      printf -- '---\n'
      cat "$manifest"
      printf '\n'
    done >"$rendered"
    resources="$(grep -c '^kind: ' "$rendered" || true)"
    pass "helm template --kube-version $kube_version: ${#manifests[@]} templates, $resources resources"

    if run "$work_dir/validate.log" "$validate" --strict --quiet \
      --kubernetes-version "$kube_version" "${manifests[@]}"; then
      pass "kubernetes-validate --strict -k $kube_version: all $resources resources valid"
    else
      fail "kubernetes-validate --strict -k $kube_version"
    fi
  done

  # The invariants do not depend on the Kubernetes version: check the first rendering.
  if [[ -f "$work_dir/$label-${kube_versions[0]}.yaml" ]]; then
    if "$python" "$repo_root/scripts/check_chart_invariants.py" "$work_dir/$label-${kube_versions[0]}.yaml" \
      --services "$services" --job "$job"; then
      checks=$((checks + 1))
    else
      checks=$((checks + 1))
      failures=$((failures + 1))
    fi
  fi
done

# The schema must reject what it promises to reject, or additionalProperties: false is untested.
echo "helm-check: values the schema must reject"
rejected_values=(
  "unknownTopLevel=1"
  "reservation.unknownKey=1"
  "image.unknownKey=x"
  "reservation.env.REDIS_URL=redis://elsewhere"
  "sourcing.env.MESH__SOURCING__LISTEN_ADDR=0.0.0.0:1"
  "availability.port=0"
)
for rejected in "${rejected_values[@]}"; do
  if "$helm" template "$release" "$chart" --set "$rejected" >"$work_dir/reject.log" 2>&1; then
    fail "schema accepted --set $rejected"
  else
    pass "schema rejects --set $rejected"
  fi
done

echo "helm-check: $((checks - failures)) passed, $failures failed"
if [[ $failures -ne 0 ]]; then
  exit 1
fi
