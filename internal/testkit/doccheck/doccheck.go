// Package doccheck reads the project's Markdown documentation for the
// tests that keep it true: its fenced blocks with the marker that says how
// each is checked, its links and headings, and the names its tables
// document. It owns the marker syntax (docs/development.md, "Examples in
// the documentation"); the tests that run the examples live beside what
// they need (docs/, integration/, cmd/subsegment_exporter/). Only tests
// import it (internal/architecture_test.go); it imports nothing of the
// project.
package doccheck

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// Files are the Markdown files whose links, anchors and blocks are checked,
// relative to the repository root: the README, every page of docs/, and the
// other documents at known places.
func Files(root string) ([]string, error) {
	files := []string{"README.md", "SECURITY.md", "CHANGELOG.md", "mixins/README.md", "bench/README.md"}
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	if len(pages) == 0 {
		return nil, fmt.Errorf("no docs/*.md under %s", root)
	}
	for _, p := range pages {
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return nil, err
		}
		files = append(files, filepath.ToSlash(rel))
	}
	sort.Strings(files[5:])
	return files, nil
}

// Root finds the repository root (the directory holding go.mod) from the
// working directory of a test.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Marker kinds: the HTML comment right before a fenced block says how the
// block is checked.
const (
	// KindExample is `<!-- example: TYPE [ARGS] -->`: a YAML, JSON or
	// configuration block loaded by the tool it is written for.
	KindExample = "example"
	// KindRun is `<!-- run: NAME -->`: a command block a test runs (the
	// scenario NAME of integration/docs_test.go).
	KindRun = "run"
	// KindNotRun is `<!-- not run: REASON -->`: a command block no test
	// runs, and why.
	KindNotRun = "not run"
	// KindOutput is `<!-- output: NAME -->`: an output block compared with
	// what the scenario NAME really printed.
	KindOutput = "output"
)

// Example types of `<!-- example: TYPE -->`.
const (
	// ExampleConfig must pass --config.check.
	ExampleConfig = "config"
	// ExampleConfigBad must fail --config.check with the quoted text.
	ExampleConfigBad = "config-bad"
	// ExamplePrometheus must pass promtool check config.
	ExamplePrometheus = "prometheus"
	// ExampleAlertmanager must pass amtool check-config.
	ExampleAlertmanager = "alertmanager"
	// ExampleFragment is a part of the complete example at an anchor.
	ExampleFragment = "fragment"
	// ExampleJSON is output whose keys a real run's output has.
	ExampleJSON = "json"
	// ExampleProxyLines are proxies' configuration lines the integration
	// tests put into real HAProxy, nginx and Apache configurations.
	ExampleProxyLines = "proxy-lines"
)

// Marker is the parsed comment before a block.
type Marker struct {
	Kind string
	// Type is an example's type (config, config-bad, …).
	Type string
	// Name is the scenario of run and output markers, the run of a json
	// example.
	Name string
	// Text is the expected error of config-bad, the reason of not run,
	// the target (file#anchor) of a fragment.
	Text string
	// Raw is the comment as written.
	Raw string
}

// Block is a fenced code block of a Markdown file.
type Block struct {
	File string // relative to the repository root
	Line int    // of the opening fence, 1-based
	Lang string
	Text string
	// Marker is the comment on the last non-blank line before the fence;
	// Kind is empty when there is none.
	Marker Marker
	// MarkerErr is why a comment before the block is not a valid marker.
	MarkerErr error
}

// Where names the block for messages: file:line.
func (b Block) Where() string { return fmt.Sprintf("%s:%d", b.File, b.Line) }

var (
	fenceRE   = regexp.MustCompile("^( {0,3})(```+|~~~+)\\s*([^`\\s]*)")
	commentRE = regexp.MustCompile(`^\s*<!--\s*(.*?)\s*-->\s*$`)
	nameRE    = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
)

// ParseMarker parses the inside of a marker comment.
func ParseMarker(s string) (Marker, error) {
	m := Marker{Raw: s}
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return m, fmt.Errorf("comment %q is not a marker (example:, run:, not run:, output:)", s)
	}
	m.Kind, rest = strings.TrimSpace(kind), strings.TrimSpace(rest)
	switch m.Kind {
	case KindExample:
		return parseExample(m, rest)
	case KindRun, KindOutput:
		if !nameRE.MatchString(rest) {
			return m, fmt.Errorf("%s: %q is not a scenario name ([a-z][a-z0-9-]*)", m.Kind, rest)
		}
		m.Name = rest
	case KindNotRun:
		if len(rest) < 10 {
			return m, fmt.Errorf("not run: give the reason (and what runs it instead, if anything), not %q", rest)
		}
		m.Text = rest
	default:
		return m, fmt.Errorf("marker kind %q unknown: use example, run, not run or output", m.Kind)
	}
	return m, nil
}

func parseExample(m Marker, rest string) (Marker, error) {
	typ, args, _ := strings.Cut(rest, " ")
	m.Type, args = typ, strings.TrimSpace(args)
	switch typ {
	case ExampleConfig, ExamplePrometheus, ExampleAlertmanager, ExampleProxyLines:
		if args != "" {
			return m, fmt.Errorf("example: %s takes no argument, got %q", typ, args)
		}
	case ExampleConfigBad:
		text, err := strconv.Unquote(args)
		if err != nil || text == "" {
			return m, fmt.Errorf(`example: config-bad needs the expected error in double quotes: config-bad "…", got %q`, args)
		}
		m.Text = text
	case ExampleFragment:
		target, ok := strings.CutPrefix(args, "of ")
		if !ok || !strings.Contains(target, "#") {
			return m, fmt.Errorf("example: fragment needs the complete example it is part of: fragment of docs/page.md#anchor, got %q", args)
		}
		m.Text = strings.TrimSpace(target)
	case ExampleJSON:
		if !nameRE.MatchString(args) {
			return m, fmt.Errorf("example: json needs the run whose output it shows (json probe, json chains), got %q", args)
		}
		m.Name = args
	default:
		return m, fmt.Errorf("example type %q unknown: use config, config-bad, prometheus, alertmanager, fragment, json or proxy-lines", typ)
	}
	return m, nil
}

// Blocks returns the fenced blocks of a Markdown file, with their markers.
func Blocks(root, file string) ([]Block, error) {
	data, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(data), "\n")
	var out []Block
	for i := 0; i < len(lines); i++ {
		m := fenceRE.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		b := Block{File: file, Line: i + 1, Lang: m[3]}
		b.Marker, b.MarkerErr = markerBefore(lines, i)
		fence := m[2]
		var body []string
		closed := false
		for i++; i < len(lines); i++ {
			if t := strings.TrimSpace(lines[i]); strings.HasPrefix(t, fence) && strings.Trim(t, fence[:1]) == "" {
				closed = true
				break
			}
			body = append(body, strings.TrimPrefix(lines[i], m[1]))
		}
		if !closed {
			return nil, fmt.Errorf("%s:%d: fenced block never closed", file, b.Line)
		}
		b.Text = strings.Join(body, "\n") + "\n"
		out = append(out, b)
	}
	return out, nil
}

// markerBefore parses the comment on the last non-blank line before line i.
func markerBefore(lines []string, i int) (Marker, error) {
	for j := i - 1; j >= 0; j-- {
		if strings.TrimSpace(lines[j]) == "" {
			continue
		}
		c := commentRE.FindStringSubmatch(lines[j])
		if c == nil {
			return Marker{}, nil
		}
		return ParseMarker(c[1])
	}
	return Marker{}, nil
}

// Command words: a block whose first line starts with one is a command
// block, whatever its language says.
var commandWords = []string{"subsegment_exporter ", "make ", "curl ", "systemctl ", "promtool ", "amtool ", "echo ", "go ", "dpkg ", "docker ", "$ "}

// IsCommandBlock reports whether a block holds commands to type: a shell
// language, or a first line that starts with a command.
func (b Block) IsCommandBlock() bool {
	switch b.Lang {
	case "sh", "shell", "bash", "console":
		return true
	}
	for _, line := range strings.Split(b.Text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// The quick start's "A: subsegment_exporter …": a host, then the command.
		if host, cmd, ok := strings.Cut(line, ": "); ok && len(host) <= 2 {
			line = cmd
		}
		for _, w := range commandWords {
			if strings.HasPrefix(line, w) {
				return true
			}
		}
		return false
	}
	return false
}

// Classify says what is wrong with a block's classification: every YAML
// and JSON block is an example, every command block is run or not run with
// a reason, output markers are on output blocks. It returns nil when the
// block is classified as the rules want.
func Classify(b Block) error {
	if b.MarkerErr != nil {
		return fmt.Errorf("%s: %v", b.Where(), b.MarkerErr)
	}
	if b.Lang == "" {
		return fmt.Errorf("%s: fenced block without a language: say what it is (yaml, json, sh, text, ini, …)", b.Where())
	}
	k := b.Marker.Kind
	switch {
	case b.Lang == "yaml" || b.Lang == "yml":
		if k != KindExample || b.Marker.Type == ExampleJSON || b.Marker.Type == ExampleProxyLines {
			return fmt.Errorf("%s: YAML block without an example marker: put <!-- example: config --> (or config-bad \"error\", prometheus, alertmanager, fragment of page#anchor) right before it", b.Where())
		}
	case b.Lang == "json":
		if k != KindExample || b.Marker.Type != ExampleJSON {
			return fmt.Errorf("%s: JSON block without <!-- example: json RUN -->: its keys must be checked against a real run", b.Where())
		}
	case b.IsCommandBlock():
		if k != KindRun && k != KindNotRun {
			return fmt.Errorf("%s: command block neither run nor explained: put <!-- run: SCENARIO --> or <!-- not run: why --> right before it", b.Where())
		}
	case k == KindRun:
		return fmt.Errorf("%s: run marker on a block that holds no command (use output: for output)", b.Where())
	case k == KindExample && b.Marker.Type != ExampleProxyLines:
		return fmt.Errorf("%s: example %s on a %s block: examples are YAML or JSON", b.Where(), b.Marker.Type, b.Lang)
	}
	if k == KindOutput && b.Lang != "text" && b.Lang != "console" {
		return fmt.Errorf("%s: output marker on a %s block: output blocks are text", b.Where(), b.Lang)
	}
	return nil
}

// Link is a Markdown link or image of a file.
type Link struct {
	File, Target string
	Line         int
}

var (
	linkRE       = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	inlineCodeRE = regexp.MustCompile("`[^`]*`")
	headingRE    = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	htmlAnchorRE = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
)

// Doc is a Markdown file's prose: its links and the anchors of its
// headings, code blocks left out.
type Doc struct {
	Links   []Link
	Anchors map[string]bool
	// Headings in order, as written.
	Headings []Heading
	// Lines of prose (code blocks blanked), for table readers.
	Lines []string
}

// Heading is a heading with its level and GitHub anchor.
type Heading struct {
	Level  int
	Text   string
	Anchor string
	Line   int
}

// Read parses a Markdown file's prose.
func Read(root, file string) (*Doc, error) {
	f, err := os.Open(filepath.Join(root, file))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := &Doc{Anchors: map[string]bool{}}
	seen := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	fence := ""
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := fenceRE.FindStringSubmatch(line); m != nil && (fence == "" || strings.HasPrefix(strings.TrimSpace(line), fence) && m[3] == "") {
			if fence == "" {
				fence = m[2]
			} else {
				fence = ""
			}
			d.Lines = append(d.Lines, "")
			continue
		}
		if fence != "" {
			d.Lines = append(d.Lines, "")
			continue
		}
		d.Lines = append(d.Lines, line)
		if m := headingRE.FindStringSubmatch(line); m != nil {
			slug := Slug(m[2])
			if c := seen[slug]; c > 0 {
				seen[slug] = c + 1
				slug = fmt.Sprintf("%s-%d", slug, c)
			} else {
				seen[slug] = 1
			}
			d.Anchors[slug] = true
			d.Headings = append(d.Headings, Heading{Level: len(m[1]), Text: m[2], Anchor: slug, Line: n})
		}
		for _, m := range htmlAnchorRE.FindAllStringSubmatch(line, -1) {
			d.Anchors[m[1]] = true
		}
		prose := inlineCodeRE.ReplaceAllString(line, "")
		for _, m := range linkRE.FindAllStringSubmatch(prose, -1) {
			d.Links = append(d.Links, Link{File: file, Target: m[1], Line: n})
		}
	}
	return d, sc.Err()
}

// Slug is GitHub's anchor of a heading: lower case, markup and punctuation
// other than - and _ dropped, spaces as -.
func Slug(heading string) string {
	heading = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`).ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Table is a Markdown table: its header cells and rows, with the marker
// comment before it (for tables the tests read).
type Table struct {
	Line   int
	Marker string
	Header []string
	Rows   [][]string
}

// Tables returns the tables of a file's prose.
func (d *Doc) Tables() []Table {
	var out []Table
	for i := 0; i < len(d.Lines); i++ {
		if !isRow(d.Lines[i]) || i+1 >= len(d.Lines) || !isDelimiter(d.Lines[i+1]) {
			continue
		}
		t := Table{Line: i + 1, Header: cells(d.Lines[i])}
		for j := i - 1; j >= 0; j-- {
			if s := strings.TrimSpace(d.Lines[j]); s != "" {
				if c := commentRE.FindStringSubmatch(s); c != nil {
					t.Marker = c[1]
				}
				break
			}
		}
		i += 2
		for ; i < len(d.Lines) && isRow(d.Lines[i]); i++ {
			t.Rows = append(t.Rows, cells(d.Lines[i]))
		}
		out = append(out, t)
	}
	return out
}

func isRow(s string) bool {
	s = strings.TrimSpace(s)
	return strings.HasPrefix(s, "|") && strings.HasSuffix(s, "|") && len(s) > 1
}

func isDelimiter(s string) bool {
	return isRow(s) && strings.Trim(strings.TrimSpace(s), "|-: ") == ""
}

// cells splits a row; a | inside backticks or escaped as \| stays in its cell.
func cells(row string) []string {
	row = strings.TrimSpace(row)
	row = row[1 : len(row)-1]
	var out []string
	var cur strings.Builder
	code := false
	for i := 0; i < len(row); i++ {
		c := row[i]
		switch {
		case c == '\\' && i+1 < len(row) && row[i+1] == '|':
			cur.WriteByte('|')
			i++
			continue
		case c == '`':
			code = !code
		case c == '|' && !code:
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	return append(out, strings.TrimSpace(cur.String()))
}

var codeSpanRE = regexp.MustCompile("`([^`]+)`")

// CodeSpans returns the contents of the backticked spans of a cell.
func CodeSpans(cell string) []string {
	var out []string
	for _, m := range codeSpanRE.FindAllStringSubmatch(cell, -1) {
		out = append(out, m[1])
	}
	return out
}

var metricNameRE = regexp.MustCompile(`^((?:subsegment|probe)_[a-zA-Z0-9_:]+)(\{[^}]*\})?$`)

// DocumentedMetrics returns the metric names in the first column of the
// tables of docs/metrics.md (a name with its labels, `name{a,b}`, counts
// as the name), with the line of each.
func DocumentedMetrics(root string) (map[string]int, error) {
	d, err := Read(root, "docs/metrics.md")
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, t := range d.Tables() {
		if len(t.Header) == 0 || t.Header[0] != "metric" {
			continue
		}
		for i, row := range t.Rows {
			for _, span := range CodeSpans(row[0]) {
				if m := metricNameRE.FindStringSubmatch(span); m != nil {
					out[m[1]] = t.Line + 2 + i
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("docs/metrics.md: no table with a metric column")
	}
	return out, nil
}
