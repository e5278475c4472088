package discovery

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambitmesh/ambit/tests/background"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitLimit only bounds a broken test; no assertion depends on timing.
const waitLimit = 30 * time.Second

// model returns a valid file with one workload per name.
func model(names ...string) string {
	var b strings.Builder
	b.WriteString("namespaces:\n  - name: default\n    labels: {istio.io/dataplane-mode: ambient}\nworkloads:\n")
	for i, n := range names {
		fmt.Fprintf(&b, "  - name: %s\n    namespace: default\n    ips: [198.18.1.%d]\n", n, i+1)
	}
	return b.String()
}

func names(s *Snapshot) string {
	var out []string
	for _, w := range s.Workloads {
		out = append(out, w.Name)
	}
	return strings.Join(out, ",")
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// replaceFile writes content next to path and renames it over path, as
// editors with atomic save do.
func replaceFile(tb testing.TB, path, content string) {
	tb.Helper()
	tmp := path + ".tmp"
	writeFile(tb, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// logRecorder is a slog handler that forwards each record's message and
// error attribute.
type logRecorder struct{ ch chan string }

func (l logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l logRecorder) WithGroup(string) slog.Handler            { return l }
func (l logRecorder) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			line += ": " + a.Value.String()
		}
		return true
	})
	select {
	case l.ch <- line:
	default: // the test is not listening for this one
	}
	return nil
}

type runningSource struct {
	store *Store
	ch    <-chan struct{}
	logs  chan string
}

// startSource runs a FileSource on path until the test ends, after its
// first load succeeded.
func startSource(tb testing.TB, path string, cfg FileSourceConfig) *runningSource {
	tb.Helper()
	rs := &runningSource{store: NewStore(), logs: make(chan string, 64)}
	ch, cancelWatch := rs.store.Watch()
	tb.Cleanup(cancelWatch)
	rs.ch = ch
	cfg.Path = path
	cfg.Logger = slog.New(logRecorder{rs.logs})
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 5 * time.Millisecond
	}
	src, err := NewFileSource(cfg, rs.store)
	if err != nil {
		tb.Fatal(err)
	}
	background.Run(tb, src.Run)
	rs.waitFor(tb, "first load", func(s *Snapshot) bool { return s.Version > 0 })
	return rs
}

// waitFor waits on the store's Watch channel until cond holds.
func (rs *runningSource) waitFor(tb testing.TB, what string, cond func(*Snapshot) bool) *Snapshot {
	tb.Helper()
	limit := time.NewTimer(waitLimit)
	defer limit.Stop()
	for {
		if s := rs.store.Load(); cond(s) {
			return s
		}
		select {
		case <-rs.ch:
		case <-limit.C:
			tb.Fatalf("gave up waiting for %s; have version %d with workloads %q", what, rs.store.Load().Version, names(rs.store.Load()))
		}
	}
}

// waitLog waits for a log line containing substr.
func (rs *runningSource) waitLog(tb testing.TB, substr string) string {
	tb.Helper()
	limit := time.NewTimer(waitLimit)
	defer limit.Stop()
	for {
		select {
		case line := <-rs.logs:
			if strings.Contains(line, substr) {
				return line
			}
		case <-limit.C:
			tb.Fatalf("gave up waiting for a log line containing %q", substr)
		}
	}
}

func hasNames(want string) func(*Snapshot) bool {
	return func(s *Snapshot) bool { return names(s) == want }
}

func TestFileSourceEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, model("a"))
	rs := startSource(t, path, FileSourceConfig{})
	if got := names(rs.store.Load()); got != "a" {
		t.Fatalf("first load: workloads %q, want a", got)
	}
	v1 := rs.store.Load().Version
	writeFile(t, path, model("a", "b"))
	s := rs.waitFor(t, "edit", hasNames("a,b"))
	if s.Version <= v1 {
		t.Errorf("version %d not bumped from %d", s.Version, v1)
	}
	if !s.WorkloadByUID("default/b").Enrolled {
		t.Error("reloaded workload not enrolled")
	}
}

func TestFileSourceBadEditKeepsPrevious(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, model("a"))
	rs := startSource(t, path, FileSourceConfig{})
	before := rs.store.Load()

	writeFile(t, path, strings.Replace(model("a"), "198.18.1.1", "198.18.1.300", 1))
	line := rs.waitLog(t, "reload failed")
	if !strings.Contains(line, `mesh.yaml:7: workloads[0].ips[0]: "198.18.1.300" is not an IP address`) {
		t.Errorf("logged %q, want the file, line and field of the problem", line)
	}
	if rs.store.Load() != before {
		t.Errorf("bad edit replaced the snapshot (version %d -> %d)", before.Version, rs.store.Load().Version)
	}

	writeFile(t, path, model("c"))
	rs.waitFor(t, "fixed edit", hasNames("c"))
}

func TestFileSourceRenameReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, model("a"))
	rs := startSource(t, path, FileSourceConfig{})
	replaceFile(t, path, model("b"))
	rs.waitFor(t, "first replace", hasNames("b"))
	// The watch must survive the replacement.
	replaceFile(t, path, model("c"))
	rs.waitFor(t, "second replace", hasNames("c"))
}

// TestFileSourceSymlinkSwap mimics a Kubernetes ConfigMap volume:
// mesh.yaml -> ..data/mesh.yaml, ..data -> ..<timestamp>, updated by
// renaming a new ..data_tmp symlink over ..data.
func TestFileSourceSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "mesh.yaml"), content)
	}
	swap := func(target string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", model("a"))
	swap("..v1")
	path := filepath.Join(dir, "mesh.yaml")
	if err := os.Symlink("..data/mesh.yaml", path); err != nil {
		t.Fatal(err)
	}
	rs := startSource(t, path, FileSourceConfig{})
	if got := names(rs.store.Load()); got != "a" {
		t.Fatalf("first load: workloads %q, want a", got)
	}
	version("..v2", model("a", "b"))
	swap("..v2")
	if err := os.RemoveAll(filepath.Join(dir, "..v1")); err != nil {
		t.Fatal(err)
	}
	rs.waitFor(t, "symlink swap", hasNames("a,b"))
	version("..v3", model("c"))
	swap("..v3")
	rs.waitFor(t, "second symlink swap", hasNames("c"))
}

func TestFileSourceDeleteAndRecreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, model("a"))
	rs := startSource(t, path, FileSourceConfig{})
	before := rs.store.Load()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	rs.waitLog(t, "no such file or directory")
	if rs.store.Load() != before {
		t.Error("deleting the file replaced the snapshot")
	}
	writeFile(t, path, model("b"))
	rs.waitFor(t, "recreated file", hasNames("b"))
}

// With change events effectively ignored (huge debounce), polling alone
// must pick up edits.
func TestFileSourcePolling(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, model("a"))
	rs := startSource(t, path, FileSourceConfig{Debounce: time.Hour, PollInterval: 10 * time.Millisecond})
	replaceFile(t, path, model("b"))
	rs.waitFor(t, "polled edit", hasNames("b"))
}

func TestFileSourceFirstLoadFails(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "mesh.yaml")
	writeFile(t, bad, "workloads:\n  - name: a\n    namespace: default\n    ips: [nope]\n")
	tests := []struct {
		name string
		path string
		want func(error) bool
	}{
		{"invalid file", bad, func(err error) bool {
			return strings.Contains(err.Error(), bad+`:4: workloads[0].ips[0]: "nope" is not an IP address`)
		}},
		{"missing file", filepath.Join(dir, "missing.yaml"), func(err error) bool { return errors.Is(err, fs.ErrNotExist) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := NewStore()
			src, err := NewFileSource(FileSourceConfig{Path: tc.path}, st)
			if err != nil {
				t.Fatal(err)
			}
			err = src.Run(context.Background())
			if err == nil || !tc.want(err) {
				t.Errorf("Run = %v", err)
			}
			if st.Synced() {
				t.Error("store synced after a failed first load")
			}
		})
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	if _, err := NewFileSource(FileSourceConfig{}, NewStore()); !errors.Is(err, ErrNoPath) {
		t.Errorf("no path: %v, want ErrNoPath", err)
	}
	if _, err := NewFileSource(FileSourceConfig{Path: "x"}, nil); err == nil {
		t.Error("nil store accepted")
	}
}
