// Traces of the routers under a segment (docs/trace.md): a path that
// changes while its segment is over its SLA is an event to look at (a
// route flap, a move to another branch of an equal-cost multipath).
{
  prometheusAlerts+:: {
    local c = $._config,
    groups+: [
      {
        name: 'subsegment-trace',
        rules: [
          {
            alert: 'SubsegmentPathChangedOverSLA',
            expr: |||
              (
                changes(subsegment_segment_path_fingerprint{%(probeSelector)s}[%(pathChangeWindow)s]) > 0
                  and on (job, instance, from, to)
                subsegment_segment_sla_exceeded{%(probeSelector)s} == 1
              )
              or
              (
                increase(subsegment_continuous_segment_path_changes_total{%(exporterSelector)s}[%(pathChangeWindow)s]) > 0
                  and on (job, instance, target, module, from, to)
                (
                  from_to:subsegment_continuous_segment_rtt_seconds:p50_%(continuousWindow)s{%(exporterSelector)s}
                    > on (job, instance, target, module, from, to)
                  subsegment_continuous_segment_sla_seconds{%(exporterSelector)s}
                )
              )
            ||| % c,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'The route under a segment over its SLA changed.',
              description: 'The routers under segment {{ $labels.from }} -> {{ $labels.to }} (chain {{ $labels.instance }}{{ with $labels.target }}, continuous {{ . }}{{ end }}) changed within %(pathChangeWindow)s while the segment is over its SLA: a route flap or a move to another path; the new path is in subsegment_segment_path_hop_info (or subsegment_continuous_segment_path_hop_info).' % c,
            },
          },
        ],
      },
    ],
  },
}
