// The subsegment_exporter monitoring mixin: alerts, recording rules and a
// dashboard. Override _config (config.libsonnet) to fit your jobs.
(import 'config.libsonnet') +
(import 'rules/rules.libsonnet') +
(import 'alerts/alerts.libsonnet') +
(import 'dashboards/dashboards.libsonnet')
