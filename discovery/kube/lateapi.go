package kube

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// LateAPI is an API group the cluster may start serving after the source started (its
// CRDs installed later): the source asks again every Interval and starts watching once
// it is served, without a restart. The messages are the source's own (constant).
type LateAPI struct {
	Interval time.Duration
	Log      *slog.Logger
	// Served asks the discovery client whether the API is served now.
	Served func() (bool, error)
	// Watch starts the watch and waits for its first lists.
	Watch func(ctx context.Context) error
	// DiscoverFailed is logged (warn) when asking fails, WatchFailed (error) when the
	// watch cannot start, which ends the wait; ServedMsg (info, with ServedAttrs) once
	// the watch runs.
	DiscoverFailed, WatchFailed, ServedMsg string
	ServedAttrs                            []any
}

// Await polls until the API is served, starts the watch and calls onChange; it returns
// then, when the watch fails, or when ctx ends.
func (a LateAPI) Await(ctx context.Context, onChange func()) {
	t := time.NewTicker(a.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		served, err := a.Served()
		if err != nil {
			a.Log.Warn(a.DiscoverFailed, "error", err)
			continue
		}
		if !served {
			continue
		}
		if err := a.Watch(ctx); err != nil {
			if ctx.Err() == nil {
				a.Log.Error(a.WatchFailed, "error", err)
			}
			return
		}
		a.Log.Info(a.ServedMsg, a.ServedAttrs...)
		onChange()
		return
	}
}

// Start watches the API and reports true if it is served now; otherwise it reports
// false and waits for it (Await) in a goroutine counted in wg.
func (a LateAPI) Start(ctx context.Context, wg *sync.WaitGroup, onChange func()) (bool, error) {
	served, err := a.Served()
	if err != nil {
		return false, err
	}
	if served {
		return true, a.Watch(ctx)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.Await(ctx, onChange)
	}()
	return false, nil
}
