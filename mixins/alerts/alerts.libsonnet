// The SNMP values of a violation change with every scrape, so they are not
// alert labels (a changing label set restarts an alert's `for`): the SLA
// alert reads them from subsegment_sla_violation_info when it renders its
// annotations.
local contextQuery =
  '{{ $sep := "" }}{{ with printf `last_over_time(subsegment_sla_violation_info{job="%%s",instance="%%s",from="%%s",to="%%s"}[%(window)s])` $labels.job $labels.instance $labels.from $labels.to | query }}' +
  '{{ range $s := . }}{{ range $k, $v := $s.Labels }}{{ if and (ne $v "") (not (match "^(__name__|job|instance|from|to|hop|source|module)$" $k)) }}' +
  '{{ $sep }}{{ $k }} on {{ $s.Labels.hop }} was {{ $v }}{{ if eq $s.Labels.source "inband" }} (in band){{ end }}{{ $sep = ", " }}' +
  '{{ end }}{{ end }}{{ end }}{{ else }}none recorded{{ end }}';

// The same for a hop over its residence SLA: its own values (from/to empty).
local hopContextQuery =
  '{{ $sep := "" }}{{ with printf `last_over_time(subsegment_sla_violation_info{job="%%s",instance="%%s",hop="%%s",from=""}[%(window)s])` $labels.job $labels.instance $labels.hop | query }}' +
  '{{ range $s := . }}{{ range $k, $v := $s.Labels }}{{ if and (ne $v "") (not (match "^(__name__|job|instance|from|to|hop|source|module)$" $k)) }}' +
  '{{ $sep }}{{ $k }} was {{ $v }}{{ if eq $s.Labels.source "inband" }} (in band){{ end }}{{ $sep = ", " }}' +
  '{{ end }}{{ end }}{{ end }}{{ else }}none recorded{{ end }}';

// Where the delay first appears on the segment's path, when a trace of it
// (trace: on_violation, the default) found a step: nothing otherwise.
local delayQuery =
  '{{ with printf `last_over_time(subsegment_segment_path_hop_info{job="%%s",instance="%%s",from="%%s",to="%%s"}[%(window)s]) and on (job, instance, from, to, ttl) last_over_time(subsegment_segment_path_delay_seconds{job="%%s",instance="%%s",from="%%s",to="%%s"}[%(window)s])` $labels.job $labels.instance $labels.from $labels.to $labels.job $labels.instance $labels.from $labels.to | query }}' +
  '{{ $sep := "" }} Delay appears at {{ range . }}{{ $sep }}{{ .Labels.address }} (TTL {{ .Labels.ttl }}){{ $sep = ", " }}{{ end }}.{{ end }}';

{
  prometheusAlerts+:: {
    local c = $._config,
    groups+: [
      {
        name: 'subsegment',
        rules: [
          {
            alert: 'SubsegmentSLAExceeded',
            expr: |||
              from_to:subsegment_segment_rtt_seconds:avg%(rttWindow)s{%(probeSelector)s}
                > on (job, instance, from, to)
              subsegment_segment_sla_seconds{%(probeSelector)s}
            ||| % c,
            'for': c.slaExceededFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'A segment of a chain is over its SLA.',
              description: 'The %(rttWindow)s average rtt of segment {{ $labels.from }} -> {{ $labels.to }} (chain {{ $labels.instance }}) is {{ $value | humanizeDuration }}, over its SLA of {{ with printf `subsegment_segment_sla_seconds{job="%%s",instance="%%s",from="%%s",to="%%s"}` $labels.job $labels.instance $labels.from $labels.to | query }}{{ . | first | value | humanizeDuration }}{{ end }}. Context: ' % c + (contextQuery % { window: c.contextWindow }) + '.' + (delayQuery % { window: c.contextWindow }),
              context: contextQuery % { window: c.contextWindow },
            },
          },
          {
            alert: 'SubsegmentHopResidenceExceeded',
            expr: |||
              hop:subsegment_hop_residence_seconds:avg%(rttWindow)s{%(probeSelector)s}
                > on (job, instance, hop)
              subsegment_hop_sla_seconds{%(probeSelector)s}
            ||| % c,
            'for': c.slaExceededFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'A hop holds probes longer than its SLA.',
              description: 'The %(rttWindow)s average residence of hop {{ $labels.hop }} (chain {{ $labels.instance }}) is {{ $value | humanizeDuration }}, over its SLA of {{ with printf `subsegment_hop_sla_seconds{job="%%s",instance="%%s",hop="%%s"}` $labels.job $labels.instance $labels.hop | query }}{{ . | first | value | humanizeDuration }}{{ end }}: the host is slow to handle them (waiting for a CPU counts). Context: ' % c + (hopContextQuery % { window: c.contextWindow }) + '.',
              context: hopContextQuery % { window: c.contextWindow },
            },
          },
          {
            alert: 'SubsegmentChainBroken',
            expr: 'max by (job, instance, from, to) (subsegment_probe_failed_segment_info{%(probeSelector)s}) == 1' % c,
            'for': c.chainBrokenFor,
            labels: { severity: 'critical' },
            annotations: {
              summary: 'A chain is broken at one segment.',
              description: 'Probes through chain {{ $labels.instance }} stop at segment {{ $labels.from }} -> {{ $labels.to }}: {{ with printf `subsegment_probe_failed_segment_info{job="%s",instance="%s",from="%s",to="%s"}` $labels.job $labels.instance $labels.from $labels.to | query }}{{ (. | first).Labels.reason }}{{ end }}.',
            },
          },
          {
            alert: 'SubsegmentProbeFailing',
            expr: |||
              min by (job, instance) (probe_success{%(probeSelector)s}) == 0
                or on (job, instance)
              up{%(probeSelector)s} == 0
            ||| % c,
            'for': c.probeFailingFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Probes through a chain fail.',
              description: 'For %(probeFailingFor)s no probe went through chain {{ $labels.instance }} and back (or its source exporter did not answer the scrape).' % c,
            },
          },
          {
            alert: 'SubsegmentClockUnsynced',
            expr: 'min by (job, instance, hop) (subsegment_hop_clock_synced{%(probeSelector)s}) == 0' % c,
            'for': c.clockUnsyncedFor,
            labels: { severity: 'info' },
            annotations: {
              summary: 'A hop has no synchronised clock.',
              description: "Hop {{ $labels.hop }}'s clock is not synchronised (adjtimex reports STA_UNSYNC): one-way delays of its segments are unavailable. Round trips are unaffected.",
            },
          },
          {
            alert: 'SubsegmentContinuousP99OverSla',
            expr: |||
              from_to:subsegment_continuous_segment_rtt_seconds:p99_%(continuousWindow)s{%(exporterSelector)s}
                > on (job, instance, target, module, from, to)
              subsegment_continuous_segment_sla_seconds{%(exporterSelector)s}
            ||| % c,
            'for': c.continuousP99For,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Segment p99 over its SLA between scrapes.',
              description: 'The %(continuousWindow)s p99 of continuous probes on segment {{ $labels.from }} -> {{ $labels.to }} (chain {{ $labels.target }}, module {{ $labels.module }}, from {{ $labels.instance }}) is {{ $value | humanizeDuration }}, over its SLA of {{ with printf `subsegment_continuous_segment_sla_seconds{job="%%s",instance="%%s",target="%%s",module="%%s",from="%%s",to="%%s"}` $labels.job $labels.instance $labels.target $labels.module $labels.from $labels.to | query }}{{ . | first | value | humanizeDuration }}{{ end }}: spikes the scrapes\' medians do not show.' % c,
            },
          },
          {
            alert: 'SubsegmentContinuousBroken',
            expr: |||
              sum by (job, instance, target, module) (rate(subsegment_continuous_probes_total{%(exporterSelector)s,result="success"}[%(continuousBrokenFor)s])) == 0
                and on (job, instance, target, module)
              sum by (job, instance, target, module) (rate(subsegment_continuous_probes_total{%(exporterSelector)s,result="failure"}[%(continuousBrokenFor)s])) > 0
            ||| % c,
            'for': c.continuousBrokenFor,
            labels: { severity: 'critical' },
            annotations: {
              summary: 'Continuous probes of a chain all fail.',
              description: 'No continuous probe of chain {{ $labels.target }} (module {{ $labels.module }}, from {{ $labels.instance }}) came back for %(continuousBrokenFor)s; subsegment_continuous_segment_failures_total says where and why.' % c,
            },
          },
          {
            alert: 'SubsegmentRelayDown',
            expr: 'up{%(exporterSelector)s} == 0' % c,
            'for': c.relayDownFor,
            labels: { severity: 'critical' },
            annotations: {
              summary: 'A relay or exporter is down.',
              description: '{{ $labels.instance }} has not answered scrapes of its /metrics for %(relayDownFor)s: chains through it break.' % c,
            },
          },
        ],
      },
    ],
  },
}
