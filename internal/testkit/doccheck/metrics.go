package doccheck

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
)

// CodeMetrics returns the names of the metrics the code declares, read
// from the Go sources (tests left out), with where each is declared:
//
//   - a client_golang options literal (CounterOpts, GaugeOpts,
//     HistogramOpts, SummaryOpts) with Namespace, Subsystem and Name,
//     constants resolved; a Name taken from a parameter of the enclosing
//     function is resolved at every call of that function;
//   - a /probe family: the first argument of NewFamily or mustFamily;
//   - a descriptor of a collector: the first argument of
//     prometheus.NewDesc, a constant or prometheus.BuildFQName of
//     constants;
//   - versioncollector.NewCollector(x): x_build_info.
//
// It reads declarations, not a running process, so a metric exposed only
// under rare conditions (one-way delays, a panic) is still found.
func CodeMetrics(root string) (map[string]string, error) {
	fset := token.NewFileSet()
	pkgs := map[string][]*ast.File{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "testkit") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		pkgs[filepath.Dir(path)] = append(pkgs[filepath.Dir(path)], f)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for dir, files := range pkgs {
		s := &scan{fset: fset, root: root, consts: map[string]string{}, params: map[string]paramName{}, out: out}
		for _, f := range files {
			s.collectConsts(f)
		}
		for _, f := range files {
			s.declarations(f)
		}
		for _, f := range files {
			s.paramCalls(f)
		}
		_ = dir
	}
	return out, nil
}

type paramName struct {
	index         int
	namespace, ss string
}

type scan struct {
	fset   *token.FileSet
	root   string
	consts map[string]string
	// params: functions whose options literal takes Name from parameter
	// index, by function name.
	params map[string]paramName
	out    map[string]string
}

func (s *scan) where(p token.Pos) string {
	pos := s.fset.Position(p)
	rel, err := filepath.Rel(s.root, pos.Filename)
	if err != nil {
		rel = pos.Filename
	}
	return fmt.Sprintf("%s:%d", filepath.ToSlash(rel), pos.Line)
}

func (s *scan) collectConsts(f *ast.File) {
	for _, decl := range f.Decls {
		g, ok := decl.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if i < len(vs.Values) {
					if v, ok := s.eval(vs.Values[i]); ok {
						s.consts[name.Name] = v
					}
				}
			}
		}
	}
}

// eval folds a constant string expression: literals, this package's
// constants, and + of those.
func (s *scan) eval(e ast.Expr) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		v, err := strconv.Unquote(e.Value)
		return v, err == nil
	case *ast.Ident:
		v, ok := s.consts[e.Name]
		return v, ok
	case *ast.ParenExpr:
		return s.eval(e.X)
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return "", false
		}
		a, ok1 := s.eval(e.X)
		b, ok2 := s.eval(e.Y)
		return a + b, ok1 && ok2
	}
	return "", false
}

func (s *scan) add(name string, pos token.Pos) {
	if _, ok := s.out[name]; !ok {
		s.out[name] = s.where(pos)
	}
}

func fqName(ns, sub, name string) string {
	var parts []string
	for _, p := range []string{ns, sub, name} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "_")
}

func calleeName(call *ast.CallExpr) (pkg, name string) {
	switch f := call.Fun.(type) {
	case *ast.Ident:
		return "", f.Name
	case *ast.SelectorExpr:
		if x, ok := f.X.(*ast.Ident); ok {
			return x.Name, f.Sel.Name
		}
		return "", f.Sel.Name
	}
	return "", ""
}

var optsTypes = map[string]bool{"CounterOpts": true, "GaugeOpts": true, "HistogramOpts": true, "SummaryOpts": true}

func optsType(cl *ast.CompositeLit) bool {
	switch t := cl.Type.(type) {
	case *ast.SelectorExpr:
		return optsTypes[t.Sel.Name]
	case *ast.Ident:
		return optsTypes[t.Name]
	}
	return false
}

// declarations finds options literals and family declarations.
func (s *scan) declarations(f *ast.File) {
	var fn *ast.FuncDecl
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.FuncDecl:
			fn = n
		case *ast.CompositeLit:
			if optsType(n) {
				s.options(n, fn)
			}
		case *ast.CallExpr:
			pkg, name := calleeName(n)
			switch {
			case (name == "NewFamily" || name == "mustFamily") && len(n.Args) > 0:
				if v, ok := s.eval(n.Args[0]); ok {
					s.add(v, n.Pos())
				}
			case pkg == "prometheus" && name == "NewDesc" && len(n.Args) > 0:
				if v, ok := s.descName(n.Args[0]); ok {
					s.add(v, n.Pos())
				}
			case pkg == "versioncollector" && name == "NewCollector" && len(n.Args) == 1:
				if v, ok := s.eval(n.Args[0]); ok {
					s.add(v+"_build_info", n.Pos())
				}
			}
		}
		return true
	})
}

// descName is a descriptor's name: a constant, or BuildFQName of constants.
func (s *scan) descName(e ast.Expr) (string, bool) {
	if call, ok := e.(*ast.CallExpr); ok {
		if pkg, name := calleeName(call); pkg == "prometheus" && name == "BuildFQName" && len(call.Args) == 3 {
			var parts [3]string
			for i, a := range call.Args {
				v, ok := s.eval(a)
				if !ok {
					return "", false
				}
				parts[i] = v
			}
			return fqName(parts[0], parts[1], parts[2]), true
		}
		return "", false
	}
	return s.eval(e)
}

func (s *scan) options(cl *ast.CompositeLit, fn *ast.FuncDecl) {
	fields := map[string]ast.Expr{}
	for _, el := range cl.Elts {
		if kv, ok := el.(*ast.KeyValueExpr); ok {
			if k, ok := kv.Key.(*ast.Ident); ok {
				fields[k.Name] = kv.Value
			}
		}
	}
	var ns, sub string
	if e := fields["Namespace"]; e != nil {
		ns, _ = s.eval(e)
	}
	if e := fields["Subsystem"]; e != nil {
		sub, _ = s.eval(e)
	}
	nameExpr := fields["Name"]
	if nameExpr == nil {
		return
	}
	if name, ok := s.eval(nameExpr); ok {
		s.add(fqName(ns, sub, name), cl.Pos())
		return
	}
	id, ok := nameExpr.(*ast.Ident)
	if !ok || fn == nil {
		return
	}
	i := 0
	for _, field := range fn.Type.Params.List {
		for _, p := range field.Names {
			if p.Name == id.Name {
				s.params[fn.Name.Name] = paramName{index: i, namespace: ns, ss: sub}
			}
			i++
		}
	}
}

// paramCalls resolves the names passed to functions that build options
// from a parameter.
func (s *scan) paramCalls(f *ast.File) {
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		pkg, name := calleeName(call)
		p, ok := s.params[name]
		if !ok || pkg != "" || p.index >= len(call.Args) {
			return true
		}
		if v, ok := s.eval(call.Args[p.index]); ok {
			s.add(fqName(p.namespace, p.ss, v), call.Pos())
		}
		return true
	})
}
