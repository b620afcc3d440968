// Alerts of STAMP segments (prober: stamp, and chains ending at a STAMP
// reflector): packet loss per direction, and DSCP re-marking.
{
  _config+:: {
    // A direction's loss ratio over this threshold, averaged over
    // stampLossWindow, for stampLossFor, fires SubsegmentPacketLoss.
    stampLossRatio: 0.01,
    stampLossWindow: '10m',
    stampLossFor: '10m',
    // How long a re-marking must be seen before SubsegmentDSCPRemarked.
    dscpRemarkedFor: '15m',
  },
  prometheusAlerts+:: {
    local c = $._config,
    groups+: [
      {
        name: 'subsegment-stamp',
        rules: [
          {
            alert: 'SubsegmentPacketLoss',
            expr: |||
              avg_over_time(subsegment_segment_one_way_loss_ratio{%(probeSelector)s}[%(stampLossWindow)s]) > %(stampLossRatio)s
                or on (job, instance, from, to)
              label_replace(
                avg_over_time(subsegment_segment_loss_ratio{%(probeSelector)s}[%(stampLossWindow)s]) > %(stampLossRatio)s
                  unless on (job, instance, from, to)
                subsegment_segment_one_way_loss_ratio{%(probeSelector)s},
                "direction", "unknown", "", "")
            ||| % c,
            'for': c.stampLossFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'STAMP packets are lost on a segment.',
              description: 'Segment {{ $labels.from }} -> {{ $labels.to }} (chain {{ $labels.instance }}) loses {{ $value | humanizePercentage }} of its STAMP packets {{ if eq $labels.direction "forward" }}on the way to the reflector{{ else if eq $labels.direction "return" }}on the way back from the reflector{{ else }}(direction not known: the reflector sends no Direct Measurement counters){{ end }}, %(stampLossWindow)s average, over the threshold of %(pct)s.' % (c { pct: std.toString(c.stampLossRatio * 100) + '%' }),
            },
          },
          {
            alert: 'SubsegmentContinuousPacketLoss',
            expr: |||
              sum by (job, instance, target, module, from, to, direction) (rate(subsegment_continuous_segment_one_way_lost_packets_total{%(exporterSelector)s}[%(stampLossWindow)s]))
                / on (job, instance, target, module, from, to) group_left
              sum by (job, instance, target, module, from, to) (rate(subsegment_continuous_segment_packets_sent_total{%(exporterSelector)s}[%(stampLossWindow)s]))
                > %(stampLossRatio)s
            ||| % c,
            'for': c.stampLossFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'STAMP packets of a continuous entry are lost on a segment.',
              description: 'Continuous probes of chain {{ $labels.target }} (module {{ $labels.module }}, from {{ $labels.instance }}) lose {{ $value | humanizePercentage }} of their STAMP packets on segment {{ $labels.from }} -> {{ $labels.to }} {{ if eq $labels.direction "forward" }}on the way to the reflector{{ else }}on the way back{{ end }} (%(stampLossWindow)s).' % c,
            },
          },
          {
            alert: 'SubsegmentRelaySTAMPLoss',
            expr: |||
              sum by (job, instance, direction) (rate(subsegment_relay_stamp_lost_packets_total{%(exporterSelector)s}[%(stampLossWindow)s]))
                / on (job, instance) group_left
              sum by (job, instance) (rate(subsegment_relay_stamp_packets_total{%(exporterSelector)s}[%(stampLossWindow)s]))
                > %(stampLossRatio)s
            ||| % c,
            'for': c.stampLossFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'STAMP packets to the reflector ending a chain are lost.',
              description: 'Relay {{ $labels.instance }} loses {{ $value | humanizePercentage }} of the STAMP packets to its next hop, a STAMP reflector, {{ if eq $labels.direction "forward" }}on the way to it{{ else }}on the way back{{ end }} (%(stampLossWindow)s); each lost packet fails the probe that carried it.' % c,
            },
          },
          {
            alert: 'SubsegmentDSCPRemarked',
            expr: 'max by (job, instance, from, to, direction) (subsegment_segment_dscp_remarked{%(probeSelector)s}) == 1' % c,
            'for': c.dscpRemarkedFor,
            labels: { severity: 'warning' },
            annotations: {
              summary: 'A router re-marks the DSCP of a segment.',
              description: 'STAMP packets on segment {{ $labels.from }} -> {{ $labels.to }} (chain {{ $labels.instance }}) are re-marked {{ if eq $labels.direction "forward" }}on the way to the reflector: sent with DSCP {{ with printf `subsegment_segment_dscp{job="%s",instance="%s",from="%s",to="%s",where="sent"}` $labels.job $labels.instance $labels.from $labels.to | query }}{{ . | first | value }}{{ end }}, received with {{ with printf `subsegment_segment_dscp{job="%s",instance="%s",from="%s",to="%s",where="at_reflector"}` $labels.job $labels.instance $labels.from $labels.to | query }}{{ . | first | value }}{{ end }}{{ else }}on the way back: returned with DSCP {{ with printf `subsegment_segment_dscp{job="%s",instance="%s",from="%s",to="%s",where="returned"}` $labels.job $labels.instance $labels.from $labels.to | query }}{{ . | first | value }}{{ end }}{{ end }}: traffic of that class loses its priority there.',
            },
          },
        ],
      },
    ],
  },
}
