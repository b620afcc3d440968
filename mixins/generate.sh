#!/bin/sh
# Renders the mixin into OUT (default: mixins/ itself): alerts.yaml,
# rules.yaml and dashboards_out/. `make mixins` runs it; `make test`
# renders into a temporary directory and fails when the checked-in files
# differ.
set -eu
cd "$(dirname "$0")"
out=${1:-.}
mkdir -p "$out/dashboards_out"
{
  echo "# Generated from mixin.libsonnet by 'make mixins': do not edit."
  jsonnet -J . -S -e 'std.manifestYamlDoc((import "mixin.libsonnet").prometheusAlerts)'
} >"$out/alerts.yaml"
{
  echo "# Generated from mixin.libsonnet by 'make mixins': do not edit."
  jsonnet -J . -S -e 'std.manifestYamlDoc((import "mixin.libsonnet").prometheusRules)'
} >"$out/rules.yaml"
jsonnet -J . -m "$out/dashboards_out" -e '(import "mixin.libsonnet").grafanaDashboards' >/dev/null
