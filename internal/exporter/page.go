package exporter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"go.yaml.in/yaml/v3"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/output/chainpage"
	"github.com/subsegment/subsegment_exporter/internal/source/continuous"
)

// DefaultHistoryLimit is how many /probe answers the landing page lists.
const DefaultHistoryLimit = 100

// History keeps the latest /probe runs, bounded, for the landing page and
// /probe/history, as blackbox_exporter keeps its recent probes. Each keeps
// the answer it gave (a few KiB); the probe's log only when it ran with
// debug=true (formatting every log costs CPU nobody asked for).
type History struct {
	mu    sync.Mutex
	limit int
	next  int64
	items []HistoryItem
}

// HistoryItem is one /probe run.
type HistoryItem struct {
	ID       int64
	Time     time.Time
	Module   string
	Target   string
	Success  bool
	Duration time.Duration
	Failure  string
	// Logs is the probe's log, kept only with debug=true.
	Logs string
	// Answer is the metrics the probe answered with.
	Answer string
	// config is the configuration the probe ran with: the debug page
	// shows its module (secrets redacted), rendered only when asked.
	config *config.Config
}

// NewHistory keeps the last limit runs (0: none).
func NewHistory(limit int) *History { return &History{limit: max(limit, 0)} }

// Add records a run and returns its ID.
func (h *History) Add(it HistoryItem) int64 {
	if h == nil || h.limit == 0 {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.next++
	it.ID = h.next
	if len(h.items) >= h.limit {
		copy(h.items, h.items[1:])
		h.items = h.items[:len(h.items)-1]
	}
	h.items = append(h.items, it)
	return it.ID
}

// Recent is the runs, newest first.
func (h *History) Recent() []HistoryItem {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]HistoryItem, len(h.items))
	for i, it := range h.items {
		out[len(out)-1-i] = it
	}
	return out
}

// Get is one run, false when it is no longer kept.
func (h *History) Get(id int64) (HistoryItem, bool) {
	if h == nil {
		return HistoryItem{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, it := range h.items {
		if it.ID == id {
			return it, true
		}
	}
	return HistoryItem{}, false
}

// pageRefresh is how often the landing page redraws the chains.
const pageRefresh = 5 * time.Second

const pageCSS = `
#chains { display: flex; flex-wrap: wrap; gap: 1em; }
figure.chain { margin: 0; padding: .5em; border: 1px solid #ddd; border-radius: 6px; width: 100%; max-width: 520px; box-sizing: border-box; }
figure.chain figcaption { margin-bottom: .4em; line-height: 1.4; word-break: break-all; }
figure.chain .module { color: #555; }
figure.chain .status { display: block; font-size: .9em; }
figure.chain.broken .status { color: #c62828; font-weight: bold; }
figure.chain.ok .status { color: #2e7d32; }
#chains svg { display: block; max-width: 100%; height: auto; font-family: sans-serif; }
#chains svg .name { font-size: 15px; font-weight: bold; }
#chains svg .rtt { font-size: 14px; font-weight: bold; }
#chains svg .small, #chains svg .context { font-size: 11.5px; }
#chains svg .broken { font-size: 12px; font-weight: bold; }
#recent table { border-collapse: collapse; font-size: .9em; }
#recent td, #recent th { padding: .15em .6em; border-bottom: 1px solid #eee; text-align: left; }
#recent .failure { color: #c62828; }
@media (max-width: 600px) { main { padding: 0 .3em; } }
`

var recentTemplate = template.Must(template.New("recent").Parse(`<section id="recent">
<h2>Recent probes</h2>
{{- if not .}}<p>No /probe request yet.</p>{{else}}
<table><tr><th>time</th><th>module</th><th>target</th><th>result</th><th>duration</th></tr>
{{- range .}}
<tr><td>{{.Time.UTC.Format "15:04:05"}}</td><td>{{.Module}}</td><td>{{.Target}}</td><td{{if not .Success}} class="failure"{{end}}><a href="probe/history?id={{.ID}}">{{if .Success}}success{{else}}failure{{end}}</a>{{if .Failure}} {{.Failure}}{{end}}</td><td>{{printf "%.3fs" .Duration.Seconds}}</td></tr>
{{- end}}
</table>{{end}}
</section>`))

// pageScript redraws the chains every few seconds without reloading; the
// drawing itself comes from the server (chainpage), so it is made in one
// place. Without JavaScript the page shows the drawing of its load.
var pageScript = fmt.Sprintf(`<script>
(function () {
  let redraws = 0;
  async function redraw() {
    try {
      const r = await fetch('chains', {cache: 'no-store'});
      if (r.ok) {
        document.getElementById('chains').outerHTML = await r.text();
        document.getElementById('chains').dataset.redraws = String(++redraws);
      }
    } catch (e) { /* the exporter restarts: try again at the next tick */ }
  }
  setInterval(redraw, %d);
})();
</script>`, pageRefresh.Milliseconds())

// pageHandlers serve the landing page with the chain drawings, the
// drawing alone (what the page polls), the chains' JSON API and the
// history's debug pages.
type pageHandlers struct {
	chains  func() []continuous.EntryState
	history *History
	opts    RouteOptions
	logger  *slog.Logger
}

func (p *pageHandlers) landing(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	var extra bytes.Buffer
	extra.WriteString("<h2>Chains</h2>\n")
	if err := chainpage.Render(&extra, p.chains(), time.Now()); err != nil {
		p.logger.Error("drawing the chains", "err", err)
	}
	if err := recentTemplate.Execute(&extra, p.history.Recent()); err != nil {
		p.logger.Error("listing recent probes", "err", err)
	}
	extra.WriteString(pageScript)
	profiling := "false"
	if p.opts.Pprof {
		profiling = "true"
	}
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "Subsegment Exporter",
		Description: "Which subsegment of a network path adds the delay",
		Version:     version.Info(),
		Profiling:   profiling,
		Form: web.LandingForm{
			Action: "probe",
			Inputs: []web.LandingFormInput{
				{Label: "Target (first hop, or URL)", Type: "text", Name: "target", Placeholder: "host:port"},
				{Label: "Module", Type: "text", Name: "module", Value: "default"},
				{Label: "Debug", Type: "checkbox", Name: "debug", Value: "true"},
			},
		},
		Links:     landingLinks(p.opts),
		ExtraHTML: extra.String(),
		ExtraCSS:  pageCSS,
	})
	if err != nil {
		http.Error(w, "landing page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	landing.ServeHTTP(w, r)
}

func (p *pageHandlers) fragment(w http.ResponseWriter, _ *http.Request) {
	var b bytes.Buffer
	if err := chainpage.Render(&b, p.chains(), time.Now()); err != nil {
		http.Error(w, "drawing the chains: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if _, err := w.Write(b.Bytes()); err != nil {
		p.logger.Debug("client left before the drawing was written", "err", err)
	}
}

// ChainsAPI is the JSON of /api/v1/chains.
type ChainsAPI struct {
	Time   time.Time               `json:"time"`
	Chains []continuous.EntryState `json:"chains"`
}

func (p *pageHandlers) api(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(ChainsAPI{Time: time.Now().UTC(), Chains: p.chains()}); err != nil {
		p.logger.Debug("client left before the chains were written", "err", err)
	}
}

func (p *pageHandlers) historyItem(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
	if err != nil {
		http.Error(w, "id is missing or not a number: /probe/history?id=N (the landing page lists them)", http.StatusBadRequest)
		return
	}
	it, ok := p.history.Get(id)
	if !ok {
		http.Error(w, fmt.Sprintf("probe %d is no longer kept: only the last %d are", id, p.history.limit), http.StatusNotFound)
		return
	}
	var b bytes.Buffer
	result := "success"
	if !it.Success {
		result = "failure: " + it.Failure
	}
	fmt.Fprintf(&b, "Probe %d, %s: module %s, target %s, %s, in %s\n\n", it.ID, it.Time.UTC().Format(time.RFC3339), it.Module, it.Target, result, it.Duration.Round(time.Microsecond))
	if it.Logs != "" {
		fmt.Fprintf(&b, "Logs for the probe:\n%s\n", it.Logs)
	} else {
		b.WriteString("Logs for the probe: kept only for /probe?debug=true requests.\n\n")
	}
	fmt.Fprintf(&b, "Metrics returned:\n%s\n", it.Answer)
	if it.config != nil {
		fmt.Fprintf(&b, "Module configuration (secrets redacted):\n%s", it.config.Redacted(it.Module))
	}
	writeText(w, p.logger, b.String())
}

// configPage serves the loaded configuration, secrets redacted, as YAML.
func configPage(holder *ConfigHolder, logger *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		c := holder.Get()
		if c == nil {
			writeText(w, logger, "# no --config.file: /probe refuses every request\n")
			return
		}
		b, err := yaml.Marshal(c)
		if err != nil {
			http.Error(w, "rendering the configuration: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if _, err := fmt.Fprintf(w, "# %s, secrets redacted\n%s", holder.path, b); err != nil {
			logger.Debug("client left before the configuration was written", "err", err)
		}
	}
}
