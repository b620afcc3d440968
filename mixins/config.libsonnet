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
    contextWindow: '15m',

    dashboardUID: 'subsegment-chain',
    dashboardTags: ['subsegment'],
    dashboardRefresh: '30s',
  },
}
