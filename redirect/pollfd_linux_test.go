package redirect_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// pollSource is what one Go source file says about the poller's linknames.
type pollSource struct {
	funcs     map[string]string // function name -> signature, parameter names dropped
	bodyless  map[string]bool   // functions declared without a body
	linknames map[string]string // local name -> linked name, from //go:linkname
	consts    map[string]string // constant name -> value expression
}

func parsePollSource(tb testing.TB, path string) pollSource {
	tb.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		tb.Fatalf("parse %s: %v", path, err)
	}
	src := pollSource{funcs: map[string]string{}, bodyless: map[string]bool{}, linknames: map[string]string{}, consts: map[string]string{}}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil {
				src.funcs[d.Name.Name] = signature(d.Type)
				src.bodyless[d.Name.Name] = d.Body == nil
			}
		case *ast.GenDecl:
			if d.Tok != token.CONST {
				continue
			}
			for _, spec := range d.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						src.consts[name.Name] = types.ExprString(vs.Values[i])
					}
				}
			}
		}
	}
	for _, cg := range f.Comments {
		for _, c := range cg.List {
			if fields := strings.Fields(c.Text); len(fields) == 3 && fields[0] == "//go:linkname" {
				src.linknames[fields[1]] = fields[2]
			}
		}
	}
	return src
}

// signature is "(T1, T2) (R1)" for a function type, whatever its parameters are named.
func signature(ft *ast.FuncType) string {
	list := func(fl *ast.FieldList) string {
		var ts []string
		if fl != nil {
			for _, f := range fl.List {
				for range max(len(f.Names), 1) {
					ts = append(ts, types.ExprString(f.Type))
				}
			}
		}
		return "(" + strings.Join(ts, ", ") + ")"
	}
	return list(ft.Params) + " " + list(ft.Results)
}

// toolchainSource returns the standard-library source directory of the toolchain that
// built this test, and fails when it cannot be sure of it.
func toolchainSource(tb testing.TB) string {
	tb.Helper()
	out, err := exec.Command("go", "env", "GOROOT", "GOVERSION").Output()
	if err != nil {
		tb.Fatalf("go env: %v (the check needs the toolchain's sources)", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != 2 {
		tb.Fatalf("go env GOROOT GOVERSION printed %q", out)
	}
	if lines[1] != runtime.Version() {
		tb.Fatalf("go on PATH is %s, the test was built by %s: its sources would not be the ones linked", lines[1], runtime.Version())
	}
	return filepath.Join(lines[0], "src")
}

// The poller functions pollfd_linux.go pulls in with go:linkname still exist in the
// toolchain in use with the types it declares, pushed by the runtime under the names
// it pulls, and the poller's error codes mean what it thinks. The linker checks none
// of the types: a Go release that changed one would link and then corrupt memory.
func TestPollLinknames(t *testing.T) {
	goSrc := toolchainSource(t)
	ours := parsePollSource(t, "pollfd_linux.go")
	poll := parsePollSource(t, filepath.Join(goSrc, pollDeclFile))
	rt := parsePollSource(t, filepath.Join(goSrc, pollDefFile))
	for _, p := range pollMismatches(ours, poll, rt) {
		t.Error(p)
	}
}

// The check finds each kind of change a Go release could make, in doctored copies of
// the toolchain's two files.
func TestPollLinknamesDetectsChanges(t *testing.T) {
	goSrc := toolchainSource(t)
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(goSrc, rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	pollText, rtText := read(pollDeclFile), read(pollDefFile)
	ours := parsePollSource(t, "pollfd_linux.go")
	tests := []struct {
		name      string
		file      string // pollDeclFile or pollDefFile
		old, new  string
		wantError string
	}{
		{"declaration re-typed", pollDeclFile,
			"func runtime_pollWait(ctx uintptr, mode int) int", "func runtime_pollWait(ctx uintptr, mode int32) int",
			"internal/poll declares runtime_pollWait(uintptr, int32)"},
		{"declaration removed", pollDeclFile,
			"func runtime_pollUnblock(ctx uintptr)\n", "",
			"no longer declares runtime_pollUnblock"},
		{"definition re-typed", pollDefFile,
			"func poll_runtime_pollSetDeadline(pd *pollDesc, d int64, mode int) {", "func poll_runtime_pollSetDeadline(pd *pollDesc, d int32, mode int) {",
			"the runtime defines poll_runtime_pollSetDeadline(uintptr, int32, int)"},
		{"push removed", pollDefFile,
			"//go:linkname poll_runtime_pollOpen internal/poll.runtime_pollOpen\n", "",
			"does not push poll_runtime_pollOpen"},
		{"definition renamed", pollDefFile,
			"func poll_runtime_pollReset(", "func poll_runtime_pollReset2(",
			"no longer defines poll_runtime_pollReset"},
		{"error code changed", pollDefFile,
			"pollErrTimeout     = 2", "pollErrTimeout     = 4",
			"pollErrTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			texts := map[string]string{pollDeclFile: pollText, pollDefFile: rtText}
			if !strings.Contains(texts[tt.file], tt.old) {
				t.Fatalf("%s has no %q to change: update the test to the toolchain", tt.file, tt.old)
			}
			texts[tt.file] = strings.Replace(texts[tt.file], tt.old, tt.new, 1)
			dir := t.TempDir()
			parsed := map[string]pollSource{}
			for rel, text := range texts {
				path := filepath.Join(dir, filepath.Base(rel))
				if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
				parsed[rel] = parsePollSource(t, path)
			}
			problems := pollMismatches(ours, parsed[pollDeclFile], parsed[pollDefFile])
			if !strings.Contains(strings.Join(problems, "\n"), tt.wantError) {
				t.Fatalf("problems %q, want one with %q", problems, tt.wantError)
			}
		})
	}
}

// Where internal/poll declares the poller functions and the runtime defines them,
// under the standard library's source directory.
const (
	pollDeclFile = "internal/poll/fd_poll_runtime.go"
	pollDefFile  = "runtime/netpoll.go"
)

// pollMismatches compares our linknamed declarations and error codes (ours) with
// internal/poll's declarations (poll) and the runtime's definitions (rt).
func pollMismatches(ours, poll, rt pollSource) []string {
	var problems []string
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	linked := 0
	for _, local := range slices.Sorted(maps.Keys(ours.linknames)) {
		target := ours.linknames[local]
		pkg, name, ok := strings.Cut(target, ".")
		if !ok || pkg != "internal/poll" || name != local {
			fail("%s is linked to %s, want internal/poll.%s: only internal/poll's poller names are checked here", local, target, local)
			continue
		}
		linked++
		sig, declared := ours.funcs[local]
		if !declared || !ours.bodyless[local] {
			fail("%s: linkname without a bodyless declaration in pollfd_linux.go", local)
			continue
		}
		if got, ok := poll.funcs[name]; !ok || !poll.bodyless[name] {
			fail("internal/poll no longer declares %s", name)
		} else if got != sig {
			fail("internal/poll declares %s%s, pollfd_linux.go %s%s", name, got, local, sig)
		}
		def := "poll_" + name // the runtime's definition
		if rt.linknames[def] != target {
			fail("runtime/netpoll.go does not push %s as %s (its go:linkname: %q)", def, target, rt.linknames[def])
		}
		// The runtime's definitions take and return its *pollDesc where internal/poll
		// (and we) say uintptr.
		if got, ok := rt.funcs[def]; !ok {
			fail("runtime/netpoll.go no longer defines %s", def)
		} else if got = strings.ReplaceAll(got, "*pollDesc", "uintptr"); got != sig {
			fail("the runtime defines %s%s (pointers as uintptr), pollfd_linux.go %s%s", def, got, local, sig)
		}
	}
	if linked == 0 {
		fail("no go:linkname found in pollfd_linux.go: the check is looking at the wrong file")
	}
	for _, c := range []string{"pollNoError", "pollErrClosing", "pollErrTimeout", "pollErrNotPollable"} {
		want, ok := ours.consts[c]
		if !ok {
			fail("pollfd_linux.go does not define %s", c)
			continue
		}
		if got := rt.consts[c]; got != want {
			fail("runtime/netpoll.go: %s = %q, pollfd_linux.go %q", c, got, want)
		}
	}
	return problems
}
