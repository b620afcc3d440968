// The subsegment_exporter monitoring mixin: alerts, recording rules and
// dashboards (the chain, and continuous probing). Override _config (config.libsonnet) to fit your jobs.
(import 'config.libsonnet') +
(import 'rules/rules.libsonnet') +
(import 'alerts/alerts.libsonnet') +
(import 'alerts/stamp.libsonnet') +
(import 'alerts/trace.libsonnet') +
(import 'dashboards/dashboards.libsonnet') +
(import 'dashboards/continuous.libsonnet')
