// The SNMP values of a violation change with every scrape, so they are not
// alert labels (a changing label set restarts an alert's `for`): the SLA
// alert reads them from subsegment_sla_violation_info when it renders its
// annotations.
local contextQuery =
  '{{ $sep := "" }}{{ with printf `last_over_time(subsegment_sla_violation_info{job="%%s",instance="%%s",from="%%s",to="%%s"}[%(window)s])` $labels.job $labels.instance $labels.from $labels.to | query }}' +
  '{{ range $s := . }}{{ range $k, $v := $s.Labels }}{{ if and (ne $v "") (not (match "^(__name__|job|instance|from|to|hop|source|module)$" $k)) }}' +
  '{{ $sep }}{{ $k }} on {{ $s.Labels.hop }} was {{ $v }}{{ if eq $s.Labels.source "inband" }} (in band){{ end }}{{ $sep = ", " }}' +
  '{{ end }}{{ end }}{{ end }}{{ else }}none recorded{{ end }}';

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
              summary: 'Segment {{ $labels.from }} -> {{ $labels.to }} of chain {{ $labels.instance }} is over its SLA.',
              description: 'The %(rttWindow)s average rtt of segment {{ $labels.from }} -> {{ $labels.to }} (chain {{ $labels.instance }}) is {{ $value | humanizeDuration }}, over its SLA of {{ with printf `subsegment_segment_sla_seconds{job="%%s",instance="%%s",from="%%s",to="%%s"}` $labels.job $labels.instance $labels.from $labels.to | query }}{{ . | first | value | humanizeDuration }}{{ end }}. Context: ' % c + (contextQuery % { window: c.contextWindow }) + '.',
              context: contextQuery % { window: c.contextWindow },
            },
          },
          {
            alert: 'SubsegmentChainBroken',
            expr: 'max by (job, instance, from, to) (subsegment_probe_failed_segment_info{%(probeSelector)s}) == 1' % c,
            'for': c.chainBrokenFor,
            labels: { severity: 'critical' },
            annotations: {
              summary: 'Chain {{ $labels.instance }} is broken at {{ $labels.from }} -> {{ $labels.to }}.',
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
              summary: 'Probes of chain {{ $labels.instance }} fail.',
              description: 'For %(probeFailingFor)s no probe went through chain {{ $labels.instance }} and back (or its source exporter did not answer the scrape).' % c,
            },
          },
          {
            alert: 'SubsegmentClockUnsynced',
            expr: 'min by (job, instance, hop) (subsegment_hop_clock_synced{%(probeSelector)s}) == 0' % c,
            'for': c.clockUnsyncedFor,
            labels: { severity: 'info' },
            annotations: {
              summary: 'Hop {{ $labels.hop }} of chain {{ $labels.instance }} has no synchronised clock.',
              description: "Hop {{ $labels.hop }}'s clock is not synchronised (adjtimex reports STA_UNSYNC): one-way delays of its segments are unavailable. Round trips are unaffected.",
            },
          },
          {
            alert: 'SubsegmentRelayDown',
            expr: 'up{%(exporterSelector)s} == 0' % c,
            'for': c.relayDownFor,
            labels: { severity: 'critical' },
            annotations: {
              summary: 'Relay or exporter {{ $labels.instance }} is down.',
              description: '{{ $labels.instance }} has not answered scrapes of its /metrics for %(relayDownFor)s: chains through it break.' % c,
            },
          },
        ],
      },
    ],
  },
}
