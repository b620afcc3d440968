package main

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/alecthomas/kingpin/v2"

	"github.com/subsegment/subsegment_exporter/internal/testkit/doccheck"
)

// declared returns kingpin's model of the application run builds: every
// command and flag as the code declares them.
func declared(t *testing.T) *kingpin.ApplicationModel {
	t.Helper()
	var app *kingpin.Application
	inspect = func(a *kingpin.Application) { app = a }
	defer func() { inspect = nil }()
	if code := run(nil); code != exitOK || app == nil {
		t.Fatalf("run did not hand over its application (exit %d)", code)
	}
	return app.Model()
}

// flagTable is a table of docs/flags.md: the flags it lists, by long name.
type flagTable struct {
	line int
	rows map[string]flagRow
	none bool // <!-- flags: CMD none -->: the command has no flags
}

type flagRow struct {
	line         int
	short        string
	defaultCell  string
	defaultSpans []string
}

var flagMarkerRE = regexp.MustCompile(`^flags:\s*([a-z-]+)(\s+none)?$`)

// documentedFlags reads the tables of docs/flags.md that carry a
// <!-- flags: COMMAND --> marker ("global": the application's flags).
func documentedFlags(t *testing.T) map[string]*flagTable {
	t.Helper()
	root, err := doccheck.Root()
	if err != nil {
		t.Fatal(err)
	}
	d, err := doccheck.Read(root, "docs/flags.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*flagTable{}
	for i, line := range d.Lines {
		if m := commentOf(line); m != nil && m[2] != "" {
			out[m[1]] = &flagTable{line: i + 1, none: true}
		}
	}
	for _, tab := range d.Tables() {
		m := flagMarkerRE.FindStringSubmatch(tab.Marker)
		if m == nil {
			continue
		}
		ft := &flagTable{line: tab.Line, rows: map[string]flagRow{}}
		if _, dup := out[m[1]]; dup {
			t.Errorf("docs/flags.md:%d: a second table for %s", tab.Line, m[1])
		}
		out[m[1]] = ft
		for j, row := range tab.Rows {
			if long, r, ok := parseFlagRow(t, tab.Line+2+j, row); ok {
				ft.rows[long] = r
			}
		}
	}
	return out
}

// parseFlagRow reads one row of a flags table (at line): its long flag,
// short flag and default; ok false, with the error reported, for a row
// that is no flag's.
func parseFlagRow(t *testing.T, line int, row []string) (long string, r flagRow, ok bool) {
	t.Helper()
	if len(row) < 3 {
		t.Errorf("docs/flags.md:%d: a flag row needs flag, default and meaning", line)
		return "", r, false
	}
	var short string
	for _, span := range doccheck.CodeSpans(row[0]) {
		switch {
		case strings.HasPrefix(span, "--"):
			if long != "" {
				t.Errorf("docs/flags.md:%d: one flag per row (%s and %s)", line, long, span)
			}
			long = strings.TrimPrefix(span, "--")
		case len(span) == 2 && span[0] == '-':
			short = span[1:]
		}
	}
	if long == "" {
		t.Errorf("docs/flags.md:%d: no `--flag` in the first cell %q", line, row[0])
		return "", r, false
	}
	return long, flagRow{line: line, short: short, defaultCell: row[1], defaultSpans: doccheck.CodeSpans(row[1])}, true
}

var commentRE = regexp.MustCompile(`^\s*<!--\s*(.*?)\s*-->\s*$`)

func commentOf(line string) []string {
	c := commentRE.FindStringSubmatch(line)
	if c == nil {
		return nil
	}
	return flagMarkerRE.FindStringSubmatch(c[1])
}

// checkFlags compares one command's declared flags with its table.
func checkFlags(cmd string, flags []*kingpin.FlagModel, tab *flagTable) []string {
	var errs []string
	if tab == nil {
		return []string{fmt.Sprintf("docs/flags.md has no table for %s: add one after <!-- flags: %s -->", cmd, cmd)}
	}
	seen := map[string]bool{}
	for _, f := range flags {
		if f.Hidden {
			continue
		}
		seen[f.Name] = true
		if tab.none {
			errs = append(errs, fmt.Sprintf("docs/flags.md:%d: %s has flag --%s, but the page says it has none", tab.line, cmd, f.Name))
			continue
		}
		row, ok := tab.rows[f.Name]
		if !ok {
			errs = append(errs, fmt.Sprintf("docs/flags.md:%d: flag --%s of %s is not in its table", tab.line, f.Name, cmd))
			continue
		}
		short := ""
		if f.Short != 0 {
			short = string(f.Short)
		}
		if row.short != short {
			errs = append(errs, fmt.Sprintf("docs/flags.md:%d: --%s has short form %q in the code, %q in the table", row.line, f.Name, short, row.short))
		}
		want := strings.Join(f.Default, ", ")
		switch {
		case want == "" && len(row.defaultSpans) > 0 && strings.HasPrefix(strings.TrimSpace(row.defaultCell), "`"):
			errs = append(errs, fmt.Sprintf("docs/flags.md:%d: --%s has no default in the code, the table says %s", row.line, f.Name, row.defaultCell))
		case want != "" && (len(row.defaultSpans) == 0 || strings.Join(row.defaultSpans, ", ") != want):
			errs = append(errs, fmt.Sprintf("docs/flags.md:%d: --%s defaults to `%s` in the code, the table says %s", row.line, f.Name, want, row.defaultCell))
		}
	}
	var extra []string
	for name, row := range tab.rows {
		if !seen[name] {
			extra = append(extra, fmt.Sprintf("docs/flags.md:%d: --%s is in the table of %s, but %s declares no such flag", row.line, name, cmd, cmd))
		}
	}
	sort.Strings(extra)
	return append(errs, extra...)
}

// Every flag of every command is in docs/flags.md with its short form and
// default, and every flag there exists: a renamed flag fails here.
func TestFlagsTablesMatchTheCode(t *testing.T) {
	model := declared(t)
	tables := documentedFlags(t)
	errs := checkFlags("global", model.Flags, tables["global"])
	commands := map[string]bool{"global": true}
	for _, c := range model.Commands {
		if c.Hidden {
			continue
		}
		commands[c.Name] = true
		errs = append(errs, checkFlags(c.Name, c.Flags, tables[c.Name])...)
		if len(c.Commands) > 0 {
			errs = append(errs, fmt.Sprintf("command %s has subcommands: teach this test to read them", c.Name))
		}
	}
	for name, tab := range tables {
		if !commands[name] {
			errs = append(errs, fmt.Sprintf("docs/flags.md:%d: a table for %q, which is no command", tab.line, name))
		}
	}
	for _, e := range errs {
		t.Error(e)
	}
	if len(model.Flags) < 10 || len(model.Commands) < 4 {
		t.Fatalf("the model has %d flags and %d commands: run did not declare them", len(model.Flags), len(model.Commands))
	}
}

// The comparison can fail: a renamed flag, a changed default or short form,
// and an undocumented flag are each reported.
func TestFlagsCheckSeesADifference(t *testing.T) {
	tab := &flagTable{rows: map[string]flagRow{
		"timeout": {short: "t", defaultCell: "`10s`", defaultSpans: []string{"10s"}},
		"listen":  {short: "l", defaultCell: "—"},
	}}
	for name, flags := range map[string][]*kingpin.FlagModel{
		"renamed":       {{Name: "timeout-seconds", Short: 't', Default: []string{"10s"}}, {Name: "listen", Short: 'l'}},
		"default":       {{Name: "timeout", Short: 't', Default: []string{"5s"}}, {Name: "listen", Short: 'l'}},
		"short":         {{Name: "timeout", Short: 'T', Default: []string{"10s"}}, {Name: "listen", Short: 'l'}},
		"undocumented":  {{Name: "timeout", Short: 't', Default: []string{"10s"}}, {Name: "listen", Short: 'l'}, {Name: "new"}},
		"lost default":  {{Name: "timeout", Short: 't'}, {Name: "listen", Short: 'l'}},
		"added default": {{Name: "timeout", Short: 't', Default: []string{"10s"}}, {Name: "listen", Short: 'l', Default: []string{":9000"}}},
	} {
		if errs := checkFlags("test", flags, tab); len(errs) == 0 {
			t.Errorf("%s: no difference reported", name)
		}
	}
	same := []*kingpin.FlagModel{{Name: "timeout", Short: 't', Default: []string{"10s"}}, {Name: "listen", Short: 'l'}}
	if errs := checkFlags("test", same, tab); len(errs) != 0 {
		t.Errorf("identical flags reported: %v", errs)
	}
}
