#!/usr/bin/env bash
# The operations files, checked offline (`make check-ops`, part of `make test`):
# Prometheus rules and their unit tests and the Compose Prometheus config (promtool), the
# Kubernetes manifests rendered by kustomize and validated against the Kubernetes schemas,
# the GitHub workflows against their schema, docker-compose.yml by a real Compose.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-.venv/bin}
K8S_VERSION=${K8S_VERSION:-1.30.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

promtool check rules deploy/prometheus/rules/*.yml
promtool test rules deploy/prometheus/tests/*.yml
# The Compose config names its token file and rules where the container mounts them.
: > "$tmp/metrics_token"
sed -e "s#/etc/prometheus/metrics_token#$tmp/metrics_token#" \
    -e "s#/etc/prometheus/rules#$PWD/deploy/prometheus/rules#" \
    deploy/prometheus/prometheus.yml > "$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"

for kustomization in deploy/k8s/base deploy/k8s/overlays/*; do
  echo "kustomize $kustomization (kubectl $(kubectl version --client 2>/dev/null | head -1))"
  kubectl kustomize "$kustomization" > "$tmp/rendered.yaml"
  "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$tmp/rendered.yaml"
done
"$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" deploy/k8s/secret.example.yaml

"$BIN/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml

# Debian's docker-compose (1.29) predates the top-level `name` (the JSON-schema check in
# `make lint` covers it): it gets the file without that line, and the project name as -p.
grep -v '^name: ' docker-compose.yml > "$tmp/docker-compose.yml"
# Secrets come only from the environment: without them Compose refuses, with them it validates.
if env -u INVENTIV_SECRET_KEY -u POSTGRES_PASSWORD -u INVENTIV_METRICS_TOKEN -u GRAFANA_ADMIN_PASSWORD \
  docker-compose --project-directory . -p inventiv -f "$tmp/docker-compose.yml" config -q 2>/dev/null; then
  echo "docker-compose.yml: starts without its secrets set" >&2
  exit 1
fi
INVENTIV_SECRET_KEY=check POSTGRES_PASSWORD=check INVENTIV_METRICS_TOKEN=check \
  GRAFANA_ADMIN_PASSWORD=check \
  docker-compose --project-directory . -p inventiv -f "$tmp/docker-compose.yml" config -q
echo "docker-compose.yml: valid for docker-compose $(docker-compose version --short)"
