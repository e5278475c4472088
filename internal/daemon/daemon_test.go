package daemon

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func parse(tb testing.TB, data bool, args ...string) (Config, error) {
	tb.Helper()
	var c Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if data {
		c.RegisterFlags(fs)
	} else {
		c.RegisterLogFlags(fs)
	}
	return c, fs.Parse(args)
}

func TestFlags(t *testing.T) {
	tests := []struct {
		name    string
		data    bool // RegisterFlags, else RegisterLogFlags
		args    []string
		want    Config
		wantErr string
	}{
		{name: "data-plane defaults", data: true, want: Config{LogFlushInterval: 100 * time.Millisecond, GOMAXPROCS: ProcsAuto}},
		{name: "log-only defaults", want: Config{}},
		{name: "log-only has no flush flag", args: []string{"-log-flush-interval=0"}, wantErr: "not defined"},
		{name: "all set", data: true, args: []string{"-log-level=debug", "-log-json=true", "-log-flush-interval=0", "-gomaxprocs=3"},
			want: Config{LogLevel: slog.LevelDebug, LogJSON: true, GOMAXPROCS: 3}},
		{name: "runtime", data: true, args: []string{"-gomaxprocs", "runtime"}, want: Config{LogFlushInterval: 100 * time.Millisecond}},
		{name: "warn", args: []string{"-log-level", "WARN"}, want: Config{LogLevel: slog.LevelWarn}},
		{name: "bad level", args: []string{"-log-level=loud"}, wantErr: `invalid value "loud" for flag -log-level`},
		{name: "zero procs", data: true, args: []string{"-gomaxprocs=0"}, wantErr: `invalid value "0" for flag -gomaxprocs: want "auto", "runtime" or a number >= 1`},
		{name: "max procs", data: true, args: []string{"-gomaxprocs=max"}, wantErr: `want "auto", "runtime" or a number >= 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.data, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c != tt.want {
				t.Fatalf("parsed %+v, want %+v", c, tt.want)
			}
		})
	}
}

func TestLogging(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		want     string
		notWant  string
		buffered bool
	}{
		{name: "text", cfg: Config{}, want: `level=INFO msg=hello k=v`, notWant: "quiet"},
		{name: "json debug", cfg: Config{LogJSON: true, LogLevel: slog.LevelDebug}, want: `"msg":"quiet"`},
		{name: "batched", cfg: Config{LogFlushInterval: time.Hour}, want: "msg=hello", buffered: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Written in this goroutine only: the batch timer (an hour) never fires.
			var out strings.Builder
			d, err := newDaemon(tt.cfg, &out)
			if err != nil {
				t.Fatal(err)
			}
			d.Logger.Debug("quiet")
			d.Logger.Info("hello", "k", "v")
			if tt.buffered {
				if out.String() != "" {
					t.Fatalf("written before the flush: %q", out.String())
				}
			}
			d.Close()
			if got := out.String(); !strings.Contains(got, tt.want) || (tt.notWant != "" && strings.Contains(got, tt.notWant)) {
				t.Fatalf("log %q, want %q and not %q", got, tt.want, tt.notWant)
			}
		})
	}
	if _, err := newDaemon(Config{LogFlushInterval: -time.Second}, io.Discard); err == nil || !strings.Contains(err.Error(), "-log-flush-interval -1s: want >= 0") {
		t.Fatalf("negative flush interval: %v", err)
	}
}

func TestRegistry(t *testing.T) {
	d, err := newDaemon(Config{}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	mfs, err := d.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		seen[mf.GetName()] = true
	}
	for _, name := range []string{"ambit_log_lines_dropped_total", "go_goroutines", "go_sched_gomaxprocs_threads"} {
		if !seen[name] {
			t.Errorf("registry lacks %s", name)
		}
	}
}

func TestSchedProcs(t *testing.T) {
	t.Cleanup(runtime.SetDefaultGOMAXPROCS)
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name       string
		p          Procs
		env        string
		wantScaler bool
		wantProcs  int // 0: unchanged
		wantErr    string
	}{
		{name: "auto", p: ProcsAuto, wantScaler: true},
		{name: "auto, fixed by the environment", p: ProcsAuto, env: "2"},
		{name: "runtime", p: ProcsRuntime},
		{name: "fixed", p: 3, wantProcs: 3},
		{name: "negative", p: -5, wantErr: "gomaxprocs -5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", tt.env)
			runtime.SetDefaultGOMAXPROCS()
			s, err := schedProcs(tt.p, log, prometheus.NewRegistry())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (s != nil) != tt.wantScaler {
				t.Fatalf("scaler %v, want one: %v", s, tt.wantScaler)
			}
			if tt.wantProcs != 0 && runtime.GOMAXPROCS(0) != tt.wantProcs {
				t.Fatalf("GOMAXPROCS %d, want %d", runtime.GOMAXPROCS(0), tt.wantProcs)
			}
		})
	}
}

func TestRun(t *testing.T) {
	t.Cleanup(runtime.SetDefaultGOMAXPROCS)
	t.Setenv("GOMAXPROCS", "")
	for _, p := range []Procs{ProcsRuntime, ProcsAuto} {
		t.Run(p.String(), func(t *testing.T) {
			d, err := newDaemon(Config{GOMAXPROCS: p}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			// SIGTERM ends the context (the signal is caught while Run runs).
			err = d.Run(func(ctx context.Context) error {
				if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
					return err
				}
				<-ctx.Done()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			d, err = newDaemon(Config{GOMAXPROCS: p}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			boom := errors.New("boom")
			if err := d.Run(func(context.Context) error { return boom }); !errors.Is(err, boom) {
				t.Fatalf("Run: %v, want the component's error", err)
			}
		})
	}
}
