{
  prometheusRules+:: {
    groups+: [
      {
        name: 'subsegment.rules',
        rules: [
          {
            record: 'from_to:subsegment_segment_rtt_seconds:avg%s' % $._config.rttWindow,
            expr: 'avg_over_time(subsegment_segment_rtt_seconds{%s}[%s])' % [$._config.probeSelector, $._config.rttWindow],
          },
          {
            record: 'from_to:subsegment_segment_rtt_seconds:max%s' % $._config.rttWindow,
            expr: 'max_over_time(subsegment_segment_rtt_seconds{%s}[%s])' % [$._config.probeSelector, $._config.rttWindow],
          },
          {
            record: 'from_to:subsegment_segment_rtt_seconds:p50_1h',
            expr: 'quantile_over_time(0.5, subsegment_segment_rtt_seconds{%s}[1h])' % $._config.probeSelector,
          },
          {
            record: 'from_to:subsegment_segment_rtt_seconds:p99_1h',
            expr: 'quantile_over_time(0.99, subsegment_segment_rtt_seconds{%s}[1h])' % $._config.probeSelector,
          },
          {
            record: 'from_to:subsegment_segment_jitter_seconds:avg%s' % $._config.rttWindow,
            expr: 'avg_over_time(subsegment_segment_jitter_seconds{%s}[%s])' % [$._config.probeSelector, $._config.rttWindow],
          },
          {
            record: 'hop:subsegment_hop_residence_seconds:avg%s' % $._config.rttWindow,
            expr: 'avg_over_time(subsegment_hop_residence_seconds{%s}[%s])' % [$._config.probeSelector, $._config.rttWindow],
          },
          {
            record: 'hop:subsegment_hop_wait_seconds:avg%s' % $._config.rttWindow,
            expr: 'avg_over_time(subsegment_hop_wait_seconds{%s}[%s])' % [$._config.probeSelector, $._config.rttWindow],
          },
          {
            // Share of the last hour the segment spent out of its SLA.
            record: 'from_to:subsegment_segment_sla_exceeded:ratio_1h',
            expr: 'avg_over_time(subsegment_segment_sla_exceeded{%s}[1h])' % $._config.probeSelector,
          },
        ],
      },
      {
        // Continuous probing (the exporters' /metrics): quantiles of every
        // probe between scrapes, from the histograms' classic buckets.
        name: 'subsegment.continuous.rules',
        rules: [
          {
            record: 'from_to:subsegment_continuous_segment_rtt_seconds:p%s_%s' % [q.name, $._config.continuousWindow],
            expr: 'histogram_quantile(%s, sum by (job, instance, target, module, from, to, le) (rate(subsegment_continuous_segment_rtt_seconds_bucket{%s}[%s])))' % [q.value, $._config.exporterSelector, $._config.continuousWindow],
          }
          for q in [{ name: '50', value: '0.5' }, { name: '99', value: '0.99' }]
        ] + [
          {
            record: 'hop:subsegment_continuous_hop_residence_seconds:p%s_%s' % [q.name, $._config.continuousWindow],
            expr: 'histogram_quantile(%s, sum by (job, instance, target, module, hop, le) (rate(subsegment_continuous_hop_residence_seconds_bucket{%s}[%s])))' % [q.value, $._config.exporterSelector, $._config.continuousWindow],
          }
          for q in [{ name: '50', value: '0.5' }, { name: '99', value: '0.99' }]
        ],
      },
    ],
  },
}
