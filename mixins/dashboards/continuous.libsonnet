// The continuous-probing dashboard: per-segment quantiles of every probe
// between scrapes, heatmaps of their distributions, hop residences and
// failures. Every selector is multi-valued, with .+ as "All".
local ds = { type: 'prometheus', uid: '${datasource}' };

local sel = 'job=~"$job",instance=~"$instance",target=~"$target",module=~"$module"';

local target(expr, legend, ref) = { datasource: ds, expr: expr, legendFormat: legend, refId: ref };

local variable(name, label, query) = {
  name: name,
  label: label,
  type: 'query',
  datasource: ds,
  query: { query: query, refId: name },
  definition: query,
  refresh: 2,
  sort: 1,
  multi: true,
  includeAll: true,
  allValue: '.+',
  current: {},
};

local timeseries(title, description, targets, unit, gridPos, overrides=[]) = {
  type: 'timeseries',
  title: title,
  description: description,
  datasource: ds,
  targets: targets,
  gridPos: gridPos,
  fieldConfig: {
    defaults: { unit: unit, custom: { lineWidth: 1, fillOpacity: 5, showPoints: 'never' } },
    overrides: overrides,
  },
  options: { legend: { displayMode: 'table', placement: 'right', calcs: ['lastNotNull', 'max'] }, tooltip: { mode: 'multi', sort: 'desc' } },
};

local heatmap(title, description, expr, gridPos, repeat) = {
  type: 'heatmap',
  title: title,
  description: description,
  datasource: ds,
  repeat: repeat,
  repeatDirection: 'h',
  maxPerRow: 3,
  gridPos: gridPos,
  targets: [target(expr, '{{le}}', 'A') + { format: 'heatmap' }],
  options: {
    calculate: false,
    yAxis: { unit: 's' },
    color: { mode: 'scheme', scheme: 'Spectral', steps: 64, exponent: 0.5 },
    cellGap: 1,
    tooltip: { show: true, yHistogram: true },
  },
};

{
  grafanaDashboards+:: {
    local c = $._config,
    'subsegment-continuous.json': {
      uid: c.continuousDashboardUID,
      title: 'Subsegment / Continuous probing',
      tags: c.dashboardTags,
      timezone: 'utc',
      refresh: c.dashboardRefresh,
      time: { from: 'now-1h', to: 'now' },
      schemaVersion: 39,
      editable: false,
      templating: {
        list: [
          { name: 'datasource', label: 'Data source', type: 'datasource', query: 'prometheus', current: {} },
          variable('job', 'Job', 'label_values(subsegment_continuous_probes_total, job)'),
          variable('instance', 'Instance', 'label_values(subsegment_continuous_probes_total{job=~"$job"}, instance)'),
          variable('target', 'Chain', 'label_values(subsegment_continuous_probes_total{job=~"$job",instance=~"$instance"}, target)'),
          variable('module', 'Module', 'label_values(subsegment_continuous_probes_total{job=~"$job",instance=~"$instance",target=~"$target"}, module)'),
          variable('from', 'Segment (near end)', 'label_values(subsegment_continuous_segment_rtt_seconds_count{job=~"$job",instance=~"$instance",target=~"$target",module=~"$module"}, from)'),
        ],
      },
      panels: [
        timeseries(
          'Segment rtt p50 and p99 (%s)' % c.continuousWindow,
          "Quantiles of every continuous probe, from the recording rules; dashed: the segment's SLA. A p99 far over the p50 is spikes a scrape every 15 s would miss.",
          [
            target('from_to:subsegment_continuous_segment_rtt_seconds:p50_%s{%s}' % [c.continuousWindow, sel], 'p50 {{target}} {{from}} -> {{to}}', 'A'),
            target('from_to:subsegment_continuous_segment_rtt_seconds:p99_%s{%s}' % [c.continuousWindow, sel], 'p99 {{target}} {{from}} -> {{to}}', 'B'),
            target('subsegment_continuous_segment_sla_seconds{%s}' % sel, 'SLA {{target}} {{from}} -> {{to}}', 'C'),
          ],
          's',
          { x: 0, y: 0, w: 24, h: 9 },
          [{ matcher: { id: 'byRegexp', options: 'SLA .*' }, properties: [{ id: 'custom.lineStyle', value: { fill: 'dash', dash: [10, 10] } }, { id: 'custom.fillOpacity', value: 0 }] }],
        ),
        heatmap(
          'Segment rtt distribution from $from',
          "Every continuous probe's rtt on the segment from $from, as a heatmap of the histogram's buckets: bursts and bimodal paths show as bands.",
          'sum by (le) (rate(subsegment_continuous_segment_rtt_seconds_bucket{%s,from=~"$from"}[$__rate_interval]))' % sel,
          { x: 0, y: 9, w: 8, h: 9 },
          'from',
        ),
        timeseries(
          'Hop residence p50 and p99 (%s)' % c.continuousWindow,
          'Time continuous probes spend inside each hop, its wait for a CPU included: a loaded host shows here.',
          [
            target('hop:subsegment_continuous_hop_residence_seconds:p50_%s{%s}' % [c.continuousWindow, sel], 'p50 {{target}} {{hop}}', 'A'),
            target('hop:subsegment_continuous_hop_residence_seconds:p99_%s{%s}' % [c.continuousWindow, sel], 'p99 {{target}} {{hop}}', 'B'),
          ],
          's',
          { x: 0, y: 18, w: 12, h: 8 },
        ),
        timeseries(
          'Failures and retransmissions',
          'Continuous probes that failed, by segment and reason, and TCP retransmissions per segment (both ends).',
          [
            target('sum by (target, from, to, reason) (rate(subsegment_continuous_segment_failures_total{%s}[$__rate_interval]))' % sel, 'failed {{target}} {{from}} -> {{to}} ({{reason}})', 'A'),
            target('sum by (target, from, to) (rate(subsegment_continuous_segment_retransmits_total{%s}[$__rate_interval]))' % sel, 'retransmits {{target}} {{from}} -> {{to}}', 'B'),
          ],
          'ops',
          { x: 12, y: 18, w: 12, h: 8 },
        ),
      ],
    },
  },
}
