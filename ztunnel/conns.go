package ztunnel

import (
	"context"
	"net"
	"sort"
	"sync"
	"sync/atomic"
)

// connTable holds the connections being relayed, for /config_dump and draining.
type connTable struct {
	mu    sync.Mutex
	next  atomic.Uint64
	conns map[uint64]*record
	wg    sync.WaitGroup
}

func newConnTable() *connTable { return &connTable{conns: map[uint64]*record{}} }

// add registers rec, relayed between cs (closed when draining).
func (t *connTable) add(rec *record, cs ...net.Conn) {
	rec.ID = t.next.Add(1)
	rec.closers = cs
	t.wg.Add(1)
	t.mu.Lock()
	t.conns[rec.ID] = rec
	t.mu.Unlock()
}

func (t *connTable) remove(rec *record) {
	t.mu.Lock()
	delete(t.conns, rec.ID)
	t.mu.Unlock()
	t.wg.Done()
}

func (t *connTable) snapshot() []ConnInfo {
	t.mu.Lock()
	out := make([]ConnInfo, 0, len(t.conns))
	for _, r := range t.conns {
		out = append(out, r.info())
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// inbound returns the connections to local pods.
func (t *connTable) inbound() []*record {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*record
	for _, r := range t.conns {
		if r.Direction != dirOutbound {
			out = append(out, r)
		}
	}
	return out
}

// drain waits for connections to finish until ctx ends, then closes the rest.
func (t *connTable) drain(ctx context.Context) {
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	t.mu.Lock()
	for _, r := range t.conns {
		for _, cl := range r.closers {
			_ = cl.Close()
		}
	}
	t.mu.Unlock()
	<-done
}
