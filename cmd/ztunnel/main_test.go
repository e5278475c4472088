package main

import (
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSchedProcs(t *testing.T) {
	t.Cleanup(runtime.SetDefaultGOMAXPROCS)
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		v          string
		env        string
		wantScaler bool
		wantProcs  int // 0: unchanged
		wantErr    string
	}{
		{v: "auto", wantScaler: true},
		{v: "auto", env: "2"},
		{v: "runtime"},
		{v: "3", wantProcs: 3},
		{v: "0", wantErr: `-gomaxprocs "0"`},
		{v: "max", wantErr: `-gomaxprocs "max"`},
	}
	for _, tt := range tests {
		t.Run(tt.v+"/"+tt.env, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", tt.env)
			runtime.SetDefaultGOMAXPROCS()
			s, err := schedProcs(tt.v, log, prometheus.NewRegistry())
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
