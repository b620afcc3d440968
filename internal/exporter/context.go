package exporter

import (
	"context"
	"log/slog"

	"github.com/subsegment/subsegment_exporter/collector"
	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/source/prober"
	"github.com/subsegment/subsegment_exporter/internal/source/sla"
	"github.com/subsegment/subsegment_exporter/snmp"
)

// SNMPContext is the /probe context hook: it asks the agents of the hops
// of segments out of their SLA, and renders what hops attached in band.
func SNMPContext(q *snmp.Querier) func(context.Context, *config.Config, *config.Module, *prober.Result, []sla.Verdict, *slog.Logger) Extra {
	return func(ctx context.Context, cfg *config.Config, m *config.Module, r *prober.Result, verdicts []sla.Verdict, log *slog.Logger) Extra {
		c := snmp.Investigate(ctx, q, cfg, m, r, verdicts)
		for _, h := range c.Hops {
			for _, e := range h.Errors {
				log.Info("SNMP context query failed", "hop", h.Hop, "reason", e.Reason, "err", e.Err)
			}
		}
		return Extra{Write: func(e *collector.Exposition) { collector.WriteSNMPContext(e, c) }, Debug: c.Debug()}
	}
}
