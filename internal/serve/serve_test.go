package serve

import (
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(tb testing.TB, addr net.Addr, path string) (int, string) {
	tb.Helper()
	resp, err := http.Get("http://" + addr.String() + path)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func start(tb testing.TB, cfg Config, h Handlers) *Servers {
	tb.Helper()
	s, err := Start(cfg, h)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func TestEndpoints(t *testing.T) {
	var notReady atomic.Pointer[error]
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "test_things_total", Help: "Things."}))
	s := start(t, Config{ReadinessAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0"}, Handlers{
		Ready: func() error {
			if e := notReady.Load(); e != nil {
				return *e
			}
			return nil
		},
		Metrics: reg,
		Admin: map[string]http.Handler{"/config_dump": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"node":"n1"}`)
		})},
	})
	tests := []struct {
		name     string
		ep       Endpoint
		path     string
		notReady bool
		code     int
		body     string
	}{
		{"ready", Readiness, ReadyPath, false, 200, "ready\n"},
		{"not ready", Readiness, ReadyPath, true, 503, "not ready: capture not attached\n"},
		{"ready on admin", Admin, ReadyPath, false, 200, "ready\n"},
		{"not ready on admin", Admin, ReadyPath, true, 503, "not ready: capture not attached\n"},
		{"metrics", Metrics, "/metrics", false, 200, "test_things_total 0"},
		{"extra admin handler", Admin, "/config_dump", false, 200, `{"node":"n1"}`},
		{"pprof on admin", Admin, "/debug/pprof/", false, 200, "goroutine"},
		{"no pprof on metrics", Metrics, "/debug/pprof/", false, 404, ""},
		{"no config dump on readiness", Readiness, "/config_dump", false, 404, ""},
		{"no metrics on admin", Admin, "/metrics", false, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.notReady {
				err := errors.New("capture not attached")
				notReady.Store(&err)
				defer notReady.Store(nil)
			}
			code, body := get(t, s.Addr(tt.ep), tt.path)
			if code != tt.code || !strings.Contains(body, tt.body) {
				t.Fatalf("GET %s: %d %q, want %d with %q", tt.path, code, body, tt.code, tt.body)
			}
		})
	}
}

func TestOff(t *testing.T) {
	s := start(t, Config{ReadinessAddr: Off, MetricsAddr: "127.0.0.1:0", AdminAddr: Off}, Handlers{})
	if s.Addr(Readiness) != nil || s.Addr(Admin) != nil || s.Addr(Metrics) == nil || s.Addr(Endpoint(7)) != nil {
		t.Fatalf("addresses %v %v %v: want only metrics", s.Addr(Readiness), s.Addr(Metrics), s.Addr(Admin))
	}
	if code, _ := get(t, s.Addr(Metrics), "/metrics"); code != 200 {
		t.Fatalf("metrics without a gatherer: %d", code)
	}
}

func TestListenError(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, err = Start(Config{ReadinessAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", AdminAddr: busy.Addr().String()}, Handlers{})
	if err == nil || !strings.Contains(err.Error(), "listen "+busy.Addr().String()) {
		t.Fatalf("error %v, want one naming the busy address", err)
	}
}

// Shutdown lets a request in flight finish; once its context ends, it cuts the rest.
func TestShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-release:
			io.WriteString(w, "done")
		case <-r.Context().Done():
		}
	})
	s := start(t, Config{ReadinessAddr: Off, MetricsAddr: Off, AdminAddr: "127.0.0.1:0"}, Handlers{Admin: map[string]http.Handler{"/slow": slow}})
	addr := s.Addr(Admin)
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + addr.String() + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-started
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	// Shutdown closes the listener at once: a new connection is refused.
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			break
		}
		c.Close()
		if i == 1000 {
			t.Fatal("admin endpoint still accepts during shutdown")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if b := <-got; b != "done" {
		t.Fatalf("request in flight: %q, want it finished", b)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	stuck := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	})
	s = start(t, Config{ReadinessAddr: Off, MetricsAddr: Off, AdminAddr: "127.0.0.1:0"}, Handlers{Admin: map[string]http.Handler{"/stuck": stuck}})
	go http.Get("http://" + s.Addr(Admin).String() + "/stuck")
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown with a request that does not end: %v, want the deadline", err)
	}
}

func TestRegisterFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	c.RegisterFlags(fs)
	for name, want := range map[string]string{"readiness-addr": ":15021", "metrics-addr": ":15020", "admin-addr": "127.0.0.1:15000"} {
		if f := fs.Lookup(name); f == nil || f.DefValue != want {
			t.Errorf("-%s: %+v, want default %q", name, f, want)
		}
	}
	if err := fs.Parse([]string{"-admin-addr=off"}); err != nil {
		t.Fatal(err)
	}
	if c != (Config{ReadinessAddr: ":15021", MetricsAddr: ":15020", AdminAddr: Off}) {
		t.Fatalf("parsed %+v", c)
	}
}
