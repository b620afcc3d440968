// Package internal_test holds the test that keeps the architecture the
// folder layout shows: floors, each importing only floors at or below its
// own, the relay imported only by the processes that run one, and the
// test kit imported only by tests.
package internal_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/subsegment/subsegment_exporter/"

// floors, lowest first: a package may import its own floor and the ones
// below. The first matching prefix wins.
var floors = []struct {
	prefix string
	floor  int
	what   string
}{
	{"internal/host/", 0, "the process's host: clocks, build info, scheduling"},
	{"internal/wire/", 1, "what crosses between hops"},
	{"internal/config", 2, "the configuration file"},
	{"internal/source/timing", 3, "the segment arithmetic"},
	{"internal/source/", 3, "the source end"},
	{"relay", 3, "a hop"},
	{"internal/source/continuous", 4, "probing between scrapes"},
	{"snmp", 4, "SNMP and in-band context"},
	{"collector", 5, "metrics"},
	{"internal/output/", 5, "what a person reads"},
	{"internal/exporter", 6, "the long-running process"},
	{"internal/demo", 6, "make demo"},
	{"cmd/", 7, "flags"},
	{"bench/", 7, "benchmarks"},
}

// relayImporters are the only packages that may import the relay: the
// command that wires it and the process that runs it.
var relayImporters = map[string]bool{
	"cmd/subsegment_exporter": true,
	"internal/exporter":       true,
}

func floorOf(pkg string) (int, string, bool) {
	best, bestLen := -1, -1
	what := ""
	for _, f := range floors {
		if (pkg == strings.TrimSuffix(f.prefix, "/") || strings.HasPrefix(pkg, f.prefix)) && len(f.prefix) > bestLen {
			best, bestLen, what = f.floor, len(f.prefix), f.what
		}
	}
	return best, what, best >= 0
}

func TestLayering(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{join .Imports ","}}`, "../...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		path, imports, _ := strings.Cut(line, "|")
		pkg := strings.TrimPrefix(path, module)
		if strings.HasPrefix(pkg, "internal/testkit/") || pkg == "integration" || pkg == "internal" || pkg == "docs" {
			continue // test helpers and tests (docs/ holds only the documentation's tests) may reach anything
		}
		floor, what, ok := floorOf(pkg)
		if !ok {
			t.Errorf("package %s has no floor: add its folder to floors in %s", pkg, "internal/architecture_test.go")
			continue
		}
		checked++
		for imp := range strings.SplitSeq(imports, ",") {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			dep := strings.TrimPrefix(imp, module)
			if strings.HasPrefix(dep, "internal/testkit/") {
				t.Errorf("%s imports the test kit %s: only tests may", pkg, dep)
				continue
			}
			if dep == "relay" && !relayImporters[pkg] {
				t.Errorf("%s imports relay: only the command and the exporter run a relay; move the rule it needs to internal/wire", pkg)
			}
			if pkg == "relay" && strings.HasPrefix(dep, "internal/source/") {
				t.Errorf("relay imports %s: a hop and the source end share floor 3 but not code; move the rule both need to internal/wire", dep)
			}
			df, dwhat, ok := floorOf(dep)
			if ok && df > floor {
				t.Errorf("%s (floor %d, %s) imports %s (floor %d, %s): a lower floor must not import a higher one", pkg, floor, what, dep, df, dwhat)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("checked only %d packages: go list found less than the module has", checked)
	}
}

// TestFloorsSeeAViolation makes sure the rule can fail: a wire package
// importing the prober is refused.
func TestFloorsSeeAViolation(t *testing.T) {
	low, _, _ := floorOf("internal/wire/frame")
	high, _, _ := floorOf("internal/source/prober")
	if low >= high {
		t.Fatalf("wire floor %d is not below the source floor %d", low, high)
	}
	if f, _, _ := floorOf("internal/source/continuous"); f != 4 {
		t.Fatalf("the longest prefix must win: continuous on floor %d", f)
	}
}

var floorInDocRE = regexp.MustCompile(`floor (\d+)`)

// TestPackageDocsSayTheirFloor: every package's doc comment names the floor
// this test gives it (and a test kit package says only tests import it), so
// that what a reader is told is what the test enforces.
func TestPackageDocsSayTheirFloor(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{.Dir}}|{{join .GoFiles ","}}`, "../...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		parts := strings.SplitN(line, "|", 3)
		pkg, dir := strings.TrimPrefix(parts[0], module), parts[1]
		if parts[2] == "" {
			continue // only tests: their package comment is in a _test.go file
		}
		doc := ""
		for f := range strings.SplitSeq(parts[2], ",") {
			file, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, f), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if file.Doc != nil {
				doc += file.Doc.Text()
			}
		}
		if doc == "" {
			t.Errorf("package %s has no doc comment: say what it owns and what it must never import", pkg)
			continue
		}
		checked++
		doc = strings.Join(strings.Fields(doc), " ")
		if strings.HasPrefix(pkg, "internal/testkit/") {
			if !strings.Contains(doc, "Only tests import it") {
				t.Errorf("package %s: its doc comment must say \"Only tests import it\"", pkg)
			}
			continue
		}
		floor, _, ok := floorOf(pkg)
		if !ok {
			continue // TestLayering reports it
		}
		m := floorInDocRE.FindStringSubmatch(doc)
		if m == nil || m[1] != strconv.Itoa(floor) {
			t.Errorf("package %s is on floor %d: its doc comment must say so (\"Layering (internal/architecture_test.go): floor %d; …\"), it says %q", pkg, floor, floor, m)
		}
	}
	if checked < 20 {
		t.Fatalf("checked only %d package comments", checked)
	}
}

// TestWireRulesDefinedOnce: a bound of what crosses between hops is
// defined in one package of internal/wire; another that applies it
// refers to it (frame.MaxDuration = peer.MaxDuration), so that the two
// can never disagree. An exported constant of the same name defined in
// two wire packages is one rule defined twice.
func TestWireRulesDefinedOnce(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{.Dir}}|{{join .GoFiles ","}}`, "../internal/wire/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	defined := map[string][]string{} // constant name → packages defining it
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		parts := strings.SplitN(line, "|", 3)
		pkg, dir := strings.TrimPrefix(parts[0], module), parts[1]
		for f := range strings.SplitSeq(parts[2], ",") {
			file, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, f), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range definedConstants(file) {
				if !slices.Contains(defined[name], pkg) {
					defined[name] = append(defined[name], pkg)
				}
			}
		}
	}
	if len(defined) < 20 {
		t.Fatalf("found only %d exported constants in internal/wire", len(defined))
	}
	for name, pkgs := range defined {
		if len(pkgs) > 1 {
			t.Errorf("%s is defined in %v: one rule defined twice; define it once and refer to it", name, pkgs)
		}
	}
}

// definedConstants is the exported constants a file gives a value of its
// own: not another package's constant (peer.MaxNameLen), nor iota's.
func definedConstants(file *ast.File) []string {
	imported := map[string]bool{}
	for _, imp := range file.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		name := p[strings.LastIndex(p, "/")+1:]
		if imp.Name != nil {
			name = imp.Name.Name
		}
		imported[name] = true
	}
	var out []string
	for _, decl := range file.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !n.IsExported() || i >= len(vs.Values) {
					continue
				}
				if sel, ok := vs.Values[i].(*ast.SelectorExpr); ok {
					if x, ok := sel.X.(*ast.Ident); ok && imported[x.Name] {
						continue
					}
				}
				out = append(out, n.Name)
			}
		}
	}
	return out
}
