// The chain dashboard, in plain jsonnet (no grafonnet): segments in chain
// order, their rtt against the SLA, residence per hop, kernel vs. L7 rtt,
// and the SNMP context of violations.
local ds = { type: 'prometheus', uid: '${datasource}' };

local sel = 'job=~"$job",instance=~"$instance",module=~"$module"';

local target(expr, legend, ref, instant=false) = {
  datasource: ds,
  expr: expr,
  legendFormat: legend,
  refId: ref,
  [if instant then 'instant']: true,
  [if instant then 'format']: 'table',
};

local timeseries(title, description, targets, unit, gridPos, overrides=[]) = {
  type: 'timeseries',
  title: title,
  description: description,
  datasource: ds,
  targets: targets,
  gridPos: gridPos,
  fieldConfig: {
    defaults: {
      unit: unit,
      custom: { lineWidth: 1, fillOpacity: 5, showPoints: 'never', spanNulls: false },
    },
    overrides: overrides,
  },
  options: { legend: { displayMode: 'table', placement: 'right', calcs: ['lastNotNull', 'max'] }, tooltip: { mode: 'multi', sort: 'desc' } },
};

local dashed(regex) = {
  matcher: { id: 'byRegexp', options: regex },
  properties: [
    { id: 'custom.lineStyle', value: { fill: 'dash', dash: [10, 10] } },
    { id: 'custom.fillOpacity', value: 0 },
  ],
};

// Every selector is multi-valued, with .+ as "All" (the mixin linters'
// rule: a dashboard works for one chain or many).
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

{
  grafanaDashboards+:: {
    local c = $._config,
    'subsegment-chain.json': {
      uid: c.dashboardUID,
      title: 'Subsegment / Chain',
      tags: c.dashboardTags,
      timezone: 'utc',
      refresh: c.dashboardRefresh,
      time: { from: 'now-1h', to: 'now' },
      schemaVersion: 39,
      editable: false,
      templating: {
        list: [
          { name: 'datasource', label: 'Data source', type: 'datasource', query: 'prometheus', current: {} },
          variable('job', 'Job', 'label_values(subsegment_segment_rtt_seconds, job)'),
          variable('instance', 'Instance', 'label_values(subsegment_segment_rtt_seconds{job=~"$job"}, instance)'),
          variable('module', 'Module', 'label_values(probe_success{job=~"$job",instance=~"$instance"}, module)'),
        ],
      },
      annotations: {
        list: [{
          name: 'Chain broken',
          datasource: ds,
          enable: true,
          expr: 'subsegment_probe_failed_segment_info{%s} == 1' % sel,
          titleFormat: 'broken at {{from}} -> {{to}}',
          textFormat: '{{reason}}',
          iconColor: 'red',
        }],
      },
      panels: [
        {
          type: 'table',
          title: 'The chain, in order',
          description: 'Every segment from the source to the end host, in chain order: its latest median rtt, its SLA, whether it is out of SLA, the kernel view of its near end, and where the chain breaks.',
          datasource: ds,
          gridPos: { x: 0, y: 0, w: 24, h: 8 },
          targets: [
            target('subsegment_segment_index{%s}' % sel, '', 'index', true),
            target('subsegment_segment_rtt_seconds{%s}' % sel, '', 'rtt', true),
            target('subsegment_segment_sla_seconds{%s}' % sel, '', 'sla', true),
            target('subsegment_segment_sla_exceeded{%s}' % sel, '', 'exceeded', true),
            target('subsegment_segment_tcp_min_rtt_seconds{%s}' % sel, '', 'kernel', true),
            target('subsegment_segment_retransmits{%s}' % sel, '', 'retrans', true),
          ],
          transformations: [
            { id: 'merge', options: {} },
            { id: 'sortBy', options: { sort: [{ field: 'Value #index' }] } },
            {
              id: 'organize',
              options: {
                excludeByName: { Time: true, job: true, instance: true, module: true },
                indexByName: { from: 0, to: 1, 'Value #rtt': 2, 'Value #sla': 3, 'Value #exceeded': 4, 'Value #kernel': 5, 'Value #retrans': 6, 'Value #index': 7 },
                renameByName: { 'Value #index': 'position', 'Value #rtt': 'rtt (median)', 'Value #sla': 'SLA', 'Value #exceeded': 'out of SLA', 'Value #kernel': 'kernel min rtt', 'Value #retrans': 'retransmits' },
              },
            },
          ],
          fieldConfig: {
            defaults: {},
            overrides: [
              { matcher: { id: 'byRegexp', options: 'rtt.*|SLA|kernel.*' }, properties: [{ id: 'unit', value: 's' }] },
              {
                matcher: { id: 'byName', options: 'out of SLA' },
                properties: [
                  { id: 'mappings', value: [{ type: 'value', options: { '0': { text: 'no', color: 'green' }, '1': { text: 'YES', color: 'red' } } }] },
                  { id: 'custom.cellOptions', value: { type: 'color-background' } },
                ],
              },
            ],
          },
        },
        timeseries(
          'Segment rtt and SLA',
          "Round trip of each segment (median of each scrape), from its hops' own clocks; dashed: the segment's SLA.",
          [
            target('subsegment_segment_rtt_seconds{%s}' % sel, '{{from}} -> {{to}}', 'A'),
            target('subsegment_segment_sla_seconds{%s}' % sel, 'SLA {{from}} -> {{to}}', 'B'),
          ],
          's',
          { x: 0, y: 8, w: 12, h: 9 },
          [dashed('SLA .*')],
        ),
        timeseries(
          'Segment rtt, %s average and 1h p99' % c.rttWindow,
          'From the recording rules the SLA alert uses.',
          [
            target('from_to:subsegment_segment_rtt_seconds:avg%s{%s}' % [c.rttWindow, sel], 'avg %s {{from}} -> {{to}}' % c.rttWindow, 'A'),
            target('from_to:subsegment_segment_rtt_seconds:p99_1h{%s}' % sel, 'p99 1h {{from}} -> {{to}}', 'B'),
          ],
          's',
          { x: 12, y: 8, w: 12, h: 9 },
          [dashed('p99 .*')],
        ),
        timeseries(
          'Residence per hop',
          'Time probes spend inside each hop (forward + return): a loaded relay shows here.',
          [target('subsegment_hop_residence_seconds{%s}' % sel, '{{hop}}', 'A')],
          's',
          { x: 0, y: 17, w: 12, h: 8 },
        ),
        timeseries(
          'Kernel TCP rtt vs. segment rtt',
          "The kernel's view (TCP_INFO of the near end's connection: smoothed and minimum rtt) next to the user-space segment rtt: where they differ, the time is spent in the hops' scheduling, or in delayed ACKs (smoothed rtt).",
          [
            target('subsegment_segment_rtt_seconds{%s}' % sel, 'segment {{from}} -> {{to}}', 'A'),
            target('subsegment_segment_tcp_min_rtt_seconds{%s}' % sel, 'kernel min {{from}} -> {{to}}', 'B'),
            target('subsegment_segment_tcp_rtt_seconds{%s}' % sel, 'kernel srtt {{from}} -> {{to}}', 'C'),
          ],
          's',
          { x: 12, y: 17, w: 12, h: 8 },
          [dashed('kernel .*')],
        ),
        timeseries(
          'SNMP context during violations',
          'Variables of hops on segments out of their SLA: from their agents (snmp), or attached to the probe by the hops (inband).',
          [target('subsegment_hop_snmp_value{%s}' % sel, '{{hop}} {{name}} ({{source}})', 'A')],
          'short',
          { x: 0, y: 25, w: 12, h: 8 },
        ),
        timeseries(
          'Out of SLA, share of the last hour',
          'Fraction of the last hour each segment spent over its SLA (or broken).',
          [target('from_to:subsegment_segment_sla_exceeded:ratio_1h{%s}' % sel, '{{from}} -> {{to}}', 'A')],
          'percentunit',
          { x: 12, y: 25, w: 12, h: 8 },
        ),
        timeseries(
          'One-way delays',
          'Only where both hops of a segment report synchronised clocks; dashed: the error bound.',
          [
            target('subsegment_segment_one_way_delay_seconds{%s}' % sel, '{{direction}} {{from}} -> {{to}}', 'A'),
            target('subsegment_segment_one_way_delay_error_bound_seconds{%s}' % sel, 'bound {{from}} -> {{to}}', 'B'),
          ],
          's',
          { x: 0, y: 33, w: 12, h: 8 },
          [dashed('bound .*')],
        ),
        timeseries(
          'Probe success, jitter and connect time',
          "probe_success of the chain, each segment's jitter and the handshake time of its near end's connection.",
          [
            target('probe_success{%s}' % sel, 'probe success', 'A'),
            target('subsegment_segment_jitter_seconds{%s}' % sel, 'jitter {{from}} -> {{to}}', 'B'),
            target('subsegment_segment_connect_seconds{%s}' % sel, 'connect {{from}} -> {{to}}', 'C'),
          ],
          's',
          { x: 12, y: 33, w: 12, h: 8 },
          [{ matcher: { id: 'byName', options: 'probe success' }, properties: [{ id: 'unit', value: 'bool' }, { id: 'custom.axisPlacement', value: 'right' }] }],
        ),
      ],
    },
  },
}
