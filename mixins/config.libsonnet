{
  _config+:: {
    // The /probe job (blackbox-style scrapes of the source exporters) and
    // the job scraping the exporters' and relays' own /metrics.
    probeSelector: 'job="subsegment"',
    exporterSelector: 'job="subsegment_exporter"',

    // How long a condition must hold before its alert fires.
    slaExceededFor: '5m',
    chainBrokenFor: '2m',
    probeFailingFor: '5m',
    clockUnsyncedFor: '1h',
    relayDownFor: '5m',

    // Window of the rtt average the SLA alert compares with the SLA, and
    // how far back it looks for the SNMP context of a violation.
    rttWindow: '5m',
    // Window of the continuous probes' quantiles (recording rules, the
    // p99 alert) and how long its p99 must stay over the SLA.
    continuousWindow: '5m',
    continuousP99For: '10m',
    continuousBrokenFor: '2m',
    contextWindow: '15m',
    // How far back a path change counts for SubsegmentPathChangedOverSLA.
    pathChangeWindow: '15m',

    dashboardUID: 'subsegment-chain',
    continuousDashboardUID: 'subsegment-continuous',
    dashboardTags: ['subsegment'],
    dashboardRefresh: '30s',
  },
}
