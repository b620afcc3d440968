// Package docs_test keeps the documentation true: the README stays a short
// door to these pages, every relative link and anchor resolves, every
// fenced block is classified (docs/development.md, "Examples in the
// documentation"), every configuration example is loaded by the built
// binary, every Prometheus and Alertmanager example by promtool and amtool,
// and the metric tables name exactly the metrics the code declares. The
// examples that need running chains are in integration/docs_test.go; the
// flag tables are checked in cmd/subsegment_exporter/docs_test.go.
package docs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/subsegment/subsegment_exporter/internal/config"
	"github.com/subsegment/subsegment_exporter/internal/testkit/doccheck"
)

var (
	root   string
	binary string
)

func TestMain(m *testing.M) {
	var err error
	if root, err = doccheck.Root(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "subsegment-docs-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binary = filepath.Join(dir, "subsegment_exporter")
	build := exec.Command("go", "build", "-o", binary, "./cmd/subsegment_exporter")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// classified are the files whose every block must carry its marker: the
// README, the pages and the mixin's page.
func classified(t *testing.T) []string {
	t.Helper()
	files, err := doccheck.Files(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if f == "README.md" || f == "mixins/README.md" || strings.HasPrefix(f, "docs/") {
			out = append(out, f)
		}
	}
	return out
}

func blocks(t *testing.T) []doccheck.Block {
	t.Helper()
	var out []doccheck.Block
	for _, f := range classified(t) {
		b, err := doccheck.Blocks(root, f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	if len(out) < 20 {
		t.Fatalf("found only %d blocks: the reader lost them", len(out))
	}
	return out
}

func pages(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, f := range classified(t) {
		if strings.HasPrefix(f, "docs/") {
			out = append(out, f)
		}
	}
	return out
}

// The README opens with the two commands, stays under 300 lines, and links
// every page of docs/ from its table.
func TestREADMEIsADoor(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if n := strings.Count(text, "\n"); n > 300 {
		t.Errorf("README.md has %d lines: keep it to 300 and move reference to docs/", n)
	}
	bs, err := doccheck.Blocks(root, "README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(text, "# subsegment_exporter\n") || len(bs) == 0 ||
		!strings.HasPrefix(bs[0].Text, "make demo ") || !strings.Contains(bs[0].Text, "\nmake test ") {
		t.Errorf("README.md must open with its title and the block of `make demo` and `make test`")
	}
	for _, p := range pages(t) {
		if !strings.Contains(text, "]("+p+")") {
			t.Errorf("README.md does not link %s from its table of pages", p)
		}
	}
	if !strings.Contains(text, "](mixins/README.md)") {
		t.Errorf("README.md does not link mixins/README.md")
	}
}

var whoRE = regexp.MustCompile(`(?i)\bneeds?\s+this\s+page\b`)

// Each page starts with one sentence on who needs it.
func TestPagesSayWhoNeedsThem(t *testing.T) {
	for _, p := range append(pages(t), "mixins/README.md") {
		data, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		paras := strings.SplitN(string(data), "\n\n", 3)
		if len(paras) < 2 || !strings.HasPrefix(paras[0], "# ") || !whoRE.MatchString(paras[1]) {
			t.Errorf("%s: after its title, the first paragraph must say who needs the page (\"… needs this page: …\")", p)
		}
	}
}

// Every relative link and anchor of the documentation resolves.
func TestLinksResolve(t *testing.T) {
	files, err := doccheck.Files(root)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]*doccheck.Doc{}
	read := func(f string) *doccheck.Doc {
		if d, ok := docs[f]; ok {
			return d
		}
		d, err := doccheck.Read(root, f)
		if err != nil {
			t.Fatal(err)
		}
		docs[f] = d
		return d
	}
	links := 0
	for _, f := range files {
		for _, l := range read(f).Links {
			links++
			if err := resolve(l, read); err != nil {
				t.Errorf("%s:%d: link %s: %v", l.File, l.Line, l.Target, err)
			}
		}
	}
	if links < 30 {
		t.Fatalf("found only %d links: the reader lost them", links)
	}
}

func resolve(l doccheck.Link, read func(string) *doccheck.Doc) error {
	if strings.Contains(l.Target, "://") || strings.HasPrefix(l.Target, "mailto:") {
		return nil
	}
	path, anchor, _ := strings.Cut(l.Target, "#")
	target := l.File
	if path != "" {
		target = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(l.File), path)))
		if strings.HasPrefix(target, "../") {
			return errors.New("leaves the repository")
		}
		if _, err := os.Stat(filepath.Join(root, target)); err != nil {
			return fmt.Errorf("%s does not exist", target)
		}
	}
	if anchor == "" {
		return nil
	}
	if !strings.HasSuffix(target, ".md") {
		return fmt.Errorf("anchor #%s on %s, which is not Markdown", anchor, target)
	}
	if !read(target).Anchors[anchor] {
		var known []string
		for a := range read(target).Anchors {
			known = append(known, a)
		}
		sort.Strings(known)
		return fmt.Errorf("%s has no heading with anchor #%s (it has %s)", target, anchor, strings.Join(known, ", "))
	}
	return nil
}

// Every block says how it is checked.
func TestEveryBlockIsClassified(t *testing.T) {
	for _, b := range blocks(t) {
		if err := doccheck.Classify(b); err != nil {
			t.Error(err)
		}
	}
}

// The rules can fail: unmarked YAML, JSON and commands, and bad markers,
// are refused.
func TestClassificationRefusesWhatItMust(t *testing.T) {
	parse := func(s string) doccheck.Marker {
		m, err := doccheck.ParseMarker(s)
		if err != nil {
			t.Fatalf("ParseMarker(%q): %v", s, err)
		}
		return m
	}
	for _, tc := range []struct {
		name string
		b    doccheck.Block
	}{
		{"yaml without marker", doccheck.Block{Lang: "yaml", Text: "modules: {}\n"}},
		{"json without marker", doccheck.Block{Lang: "json", Text: "{}\n"}},
		{"json as config", doccheck.Block{Lang: "json", Text: "{}\n", Marker: parse("example: config")}},
		{"sh without marker", doccheck.Block{Lang: "sh", Text: "ls\n"}},
		{"command in a text block", doccheck.Block{Lang: "text", Text: "subsegment_exporter probe b:9000\n"}},
		{"host-prefixed command", doccheck.Block{Lang: "text", Text: "A: subsegment_exporter probe B:9000\n"}},
		{"no language", doccheck.Block{Lang: "", Text: "x\n"}},
		{"output on yaml", doccheck.Block{Lang: "yaml", Text: "a: 1\n", Marker: parse("output: x")}},
	} {
		if doccheck.Classify(tc.b) == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	for _, bad := range []string{
		"example: conf", `example: config-bad missing-quotes`, "example: fragment docs/x.md",
		"not run: x", "run: Not A Name", "exemple: config", "example: json",
	} {
		if _, err := doccheck.ParseMarker(bad); err == nil {
			t.Errorf("marker %q accepted", bad)
		}
	}
	m := parse(`example: config-bad "line 4: \"x\""`)
	if m.Type != doccheck.ExampleConfigBad || m.Text != `line 4: "x"` {
		t.Errorf("config-bad marker parsed as %+v", m)
	}
	if got := doccheck.Slug("Nagios and Icinga: `check`"); got != "nagios-and-icinga-check" {
		t.Errorf("slug %q", got)
	}
	if got := doccheck.Slug("`--remove-perf-headers`"); got != "--remove-perf-headers" {
		t.Errorf("slug %q", got)
	}
}

func examples(t *testing.T, typ string) []doccheck.Block {
	t.Helper()
	var out []doccheck.Block
	for _, b := range blocks(t) {
		if b.Marker.Kind == doccheck.KindExample && b.Marker.Type == typ {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no <!-- example: %s --> block found", typ)
	}
	return out
}

// run runs a program (bounded) in dir and returns its combined output and
// exit code.
func run(t *testing.T, dir, path string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &exit):
		return out.String(), exit.ExitCode()
	}
	t.Fatalf("%s %v: %v", path, args, err)
	return "", 0
}

func writeExample(t *testing.T, b doccheck.Block, name string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(b.Text), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Every configuration example loads with --config.check.
func TestConfigExamplesLoad(t *testing.T) {
	for _, b := range examples(t, doccheck.ExampleConfig) {
		dir := writeExample(t, b, "subsegment.yml")
		out, code := run(t, dir, binary, "--config.check", "--config.file", "subsegment.yml")
		if code != 0 || !strings.Contains(out, "subsegment.yml is valid") {
			t.Errorf("%s: the example does not load (exit %d):\n%s", b.Where(), code, out)
		}
	}
}

// Every bad configuration example fails with the error it shows.
func TestBadConfigExamplesFail(t *testing.T) {
	for _, b := range examples(t, doccheck.ExampleConfigBad) {
		dir := writeExample(t, b, "subsegment.yml")
		out, code := run(t, dir, binary, "--config.check", "--config.file", "subsegment.yml")
		if code != 1 || !strings.Contains(out, b.Marker.Text) {
			t.Errorf("%s: want exit 1 with %q, got exit %d:\n%s", b.Where(), b.Marker.Text, code, out)
		}
	}
}

// requireTool finds a Debian tool; locally a missing one skips, in CI it
// fails (make test installs it).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed: `make test` installs it (make deps)", name)
	}
	t.Skipf("%s not installed: run `make deps`", name)
	return ""
}

// Every Prometheus example passes promtool, with the mixin's rule files
// beside it.
func TestPrometheusExamplesLoad(t *testing.T) {
	promtool := requireTool(t, "promtool")
	for _, b := range examples(t, doccheck.ExamplePrometheus) {
		dir := writeExample(t, b, "prometheus.yml")
		for _, f := range []string{"alerts.yaml", "rules.yaml"} {
			data, err := os.ReadFile(filepath.Join(root, "mixins", f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		out, code := run(t, dir, promtool, "check", "config", "prometheus.yml")
		if code != 0 {
			t.Errorf("%s: promtool check config (exit %d):\n%s", b.Where(), code, out)
		}
	}
}

// Every Alertmanager example passes amtool.
func TestAlertmanagerExamplesLoad(t *testing.T) {
	amtool := requireTool(t, "amtool")
	for _, b := range examples(t, doccheck.ExampleAlertmanager) {
		dir := writeExample(t, b, "alertmanager.yml")
		out, code := run(t, dir, amtool, "check-config", "alertmanager.yml")
		if code != 0 {
			t.Errorf("%s: amtool check-config (exit %d):\n%s", b.Where(), code, out)
		}
	}
}

// A fragment parses and names a complete example that exists.
func TestFragmentsNameTheirExample(t *testing.T) {
	for _, b := range blocks(t) {
		if b.Marker.Kind != doccheck.KindExample || b.Marker.Type != doccheck.ExampleFragment {
			continue
		}
		var v any
		if err := yaml.Unmarshal([]byte(b.Text), &v); err != nil {
			t.Errorf("%s: fragment is not YAML: %v", b.Where(), err)
		}
		if err := resolve(doccheck.Link{File: b.File, Target: b.Marker.Text, Line: b.Line}, func(f string) *doccheck.Doc {
			d, err := doccheck.Read(root, f)
			if err != nil {
				t.Fatal(err)
			}
			return d
		}); err != nil {
			t.Errorf("%s: fragment of %s: %v", b.Where(), b.Marker.Text, err)
		}
	}
}

var stampNameRE = regexp.MustCompile(`"[A-Za-z0-9_.-]+;dur=`)

// The proxies' lines are the ones the integration tests give real HAProxy,
// nginx and Apache.
func TestProxyLinesAreTheTestedOnes(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(root, "integration", "http_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, b := range examples(t, doccheck.ExampleProxyLines) {
		for _, line := range strings.Split(b.Text, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			want := stampNameRE.ReplaceAllString(strings.ReplaceAll(line, "%", "%%"), `"%s;dur=`)
			if !bytes.Contains(src, []byte(want)) {
				t.Errorf("%s: %q is not a line integration/http_test.go gives the proxies (looked for %q)", b.Where(), line, want)
			}
			checked++
		}
	}
	if checked < 4 {
		t.Errorf("checked %d proxy lines, want HAProxy's two, nginx's and Apache's", checked)
	}
}

// The metric tables name exactly the metrics the code declares: a renamed
// or new metric fails here until docs/metrics.md follows.
func TestMetricsTablesMatchTheCode(t *testing.T) {
	documented, err := doccheck.DocumentedMetrics(root)
	if err != nil {
		t.Fatal(err)
	}
	code, err := doccheck.CodeMetrics(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(code) < 40 {
		t.Fatalf("found only %d metrics in the code: the scanner lost some: %v", len(code), code)
	}
	var missing, unknown []string
	for name, where := range code {
		if _, ok := documented[name]; !ok {
			missing = append(missing, fmt.Sprintf("%s (declared at %s)", name, where))
		}
	}
	for name, line := range documented {
		if _, ok := code[name]; !ok {
			unknown = append(unknown, fmt.Sprintf("%s (docs/metrics.md:%d)", name, line))
		}
	}
	slices.Sort(missing)
	slices.Sort(unknown)
	for _, m := range missing {
		t.Errorf("metric %s is not in a table of docs/metrics.md", m)
	}
	for _, u := range unknown {
		t.Errorf("docs/metrics.md documents %s, which the code does not declare", u)
	}
}

// configTypes are the configuration's types by the name a
// <!-- keys: TYPE --> table of docs/configuration.md gives.
var configTypes = map[string]reflect.Type{
	"Config":     reflect.TypeFor[config.Config](),
	"Module":     reflect.TypeFor[config.Module](),
	"SLA":        reflect.TypeFor[config.SLA](),
	"HTTPProbe":  reflect.TypeFor[config.HTTPProbe](),
	"STAMPProbe": reflect.TypeFor[config.STAMPProbe](),
	"SNMP":       reflect.TypeFor[config.SNMP](),
	"Auth":       reflect.TypeFor[config.Auth](),
	"Continuous": reflect.TypeFor[config.Continuous](),
}

// yamlFields returns a struct's keys and their types (pointers, lists and
// maps looked through), nil for a type that is no struct.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	t = elem(t)
	if t.Kind() != reflect.Struct {
		return nil
	}
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag != "" && tag != "-" && f.IsExported() {
			out[tag] = elem(f.Type)
		}
	}
	return out
}

func elem(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	return t
}

// braceSets returns the key names of every {a, b: {c, d}} group of a code
// span, nested groups included.
func braceSets(span string) [][]string {
	var out [][]string
	var stack [][]string
	word := strings.Builder{}
	inValue := false
	flush := func() {
		if w := strings.TrimSpace(word.String()); w != "" && len(stack) > 0 && !inValue {
			stack[len(stack)-1] = append(stack[len(stack)-1], w)
		}
		word.Reset()
	}
	for _, r := range span {
		switch r {
		case '{':
			flush()
			stack = append(stack, nil)
			inValue = false
		case '}':
			flush()
			if len(stack) > 0 {
				out = append(out, stack[len(stack)-1])
				stack = stack[:len(stack)-1]
			}
			inValue = len(stack) > 0
		case ',':
			flush()
			inValue = false
		case ':':
			flush()
			inValue = true
		default:
			if !inValue {
				word.WriteRune(r)
			}
		}
	}
	return out
}

// Every key of the configuration is in a table of docs/configuration.md,
// and every key there exists: a renamed YAML key fails here even where no
// example uses it.
func TestConfigurationKeysMatchTheCode(t *testing.T) {
	d, err := doccheck.Read(root, "docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	tables := map[string]doccheck.Table{}
	for _, tab := range d.Tables() {
		if name, ok := strings.CutPrefix(tab.Marker, "keys: "); ok {
			if configTypes[name] == nil {
				t.Errorf("docs/configuration.md:%d: keys table of %q, which is no configuration type", tab.Line, name)
				continue
			}
			tables[name] = tab
		}
	}
	own := map[reflect.Type]bool{}
	for name := range tables {
		own[configTypes[name]] = true
	}
	for name, typ := range configTypes {
		tab, ok := tables[name]
		if !ok {
			t.Errorf("docs/configuration.md has no <!-- keys: %s --> table", name)
			continue
		}
		checkKeysTable(t, tab, typ, own)
	}
}

func checkKeysTable(t *testing.T, tab doccheck.Table, typ reflect.Type, own map[reflect.Type]bool) {
	t.Helper()
	fields := yamlFields(typ)
	documented := map[string]bool{}
	for i, row := range tab.Rows {
		checkKeysRow(t, tab.Line+2+i, row, typ, fields, documented, own)
	}
	for _, k := range keysOf(fields) {
		if !documented[k] {
			t.Errorf("docs/configuration.md:%d: key %q of %s is not in its table", tab.Line, k, typ.Name())
		}
	}
	// Dotted rows document their struct's keys one by one: all of them.
	for k, ft := range fields {
		sub := yamlFields(ft)
		if sub == nil || own[ft] || !hasDottedRows(tab, k) {
			continue
		}
		for s := range sub {
			if !slices.ContainsFunc(tab.Rows, func(row []string) bool { return slices.Contains(doccheck.CodeSpans(row[0]), k+"."+s) }) {
				t.Errorf("docs/configuration.md:%d: key %s.%s of %s is not in its table", tab.Line, k, s, typ.Name())
			}
		}
	}
}

// checkKeysRow checks the keys a table row (at line) names in its first
// cell against typ's fields, marking them documented; a key holding a
// struct without a table of its own lists that struct's keys in the row.
func checkKeysRow(t *testing.T, line int, row []string, typ reflect.Type, fields map[string]reflect.Type, documented map[string]bool, own map[reflect.Type]bool) {
	t.Helper()
	var sets [][]string
	for _, cell := range row {
		for _, span := range doccheck.CodeSpans(cell) {
			sets = append(sets, braceSets(span)...)
		}
	}
	for _, key := range doccheck.CodeSpans(row[0]) {
		first, rest, dotted := strings.Cut(key, ".")
		ft, ok := fields[first]
		if !ok {
			t.Errorf("docs/configuration.md:%d: key %q: %s has no key %q (it has %v)", line, key, typ.Name(), first, keysOf(fields))
			continue
		}
		documented[first] = true
		if !dotted {
			checkNested(t, line, key, ft, sets, own)
		} else if _, ok := yamlFields(ft)[rest]; !ok {
			t.Errorf("docs/configuration.md:%d: key %q: %s has no key %q", line, key, ft.Name(), rest)
		}
	}
}

// hasDottedRows: some row of tab documents a key of k's struct as k.key.
func hasDottedRows(tab doccheck.Table, k string) bool {
	return slices.ContainsFunc(tab.Rows, func(row []string) bool {
		return slices.ContainsFunc(doccheck.CodeSpans(row[0]), func(key string) bool { return strings.HasPrefix(key, k+".") })
	})
}

// checkNested requires a key whose value is a struct without a table of
// its own (a list of {from, to, rtt}) to list that struct's keys in its row,
// and theirs in turn.
func checkNested(t *testing.T, line int, key string, ft reflect.Type, sets [][]string, own map[reflect.Type]bool) {
	t.Helper()
	sub := yamlFields(ft)
	if sub == nil || own[ft] {
		return
	}
	want := keysOf(sub)
	if !slices.ContainsFunc(sets, func(s []string) bool {
		s = slices.Clone(s)
		slices.Sort(s)
		return slices.Equal(s, want)
	}) {
		t.Errorf("docs/configuration.md:%d: key %q holds %v: list them in its row as `{%s}`", line, key, want, strings.Join(want, ", "))
		return
	}
	for k, st := range sub {
		checkNested(t, line, key+"."+k, st, sets, own)
	}
}

func keysOf(m map[string]reflect.Type) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
