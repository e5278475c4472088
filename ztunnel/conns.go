package ztunnel

import (
	"context"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// ConnInfo describes one proxied connection, for the access log, metrics and /config_dump.
type ConnInfo struct {
	ID          uint64    `json:"id"`
	Direction   string    `json:"direction"` // outbound, inbound, inbound_plaintext, local
	Src         string    `json:"src"`
	Dst         string    `json:"dst"`
	SrcIdentity string    `json:"srcIdentity,omitempty"`
	DstIdentity string    `json:"dstIdentity,omitempty"`
	SrcWorkload string    `json:"srcWorkload,omitempty"`
	DstWorkload string    `json:"dstWorkload,omitempty"`
	DstService  string    `json:"dstService,omitempty"`
	HBONEAddr   string    `json:"hboneAddr,omitempty"`
	Security    string    `json:"security"` // mutual_tls or none
	Start       time.Time `json:"start"`
	Sent        int64     `json:"bytesSent"` // client -> server
	Received    int64     `json:"bytesReceived"`
}

// connInfo is a live connection: its description plus byte counters and the sockets to
// close when draining.
type connInfo struct {
	ConnInfo
	sent, recv counter
	closers    []net.Conn
}

type connTable struct {
	mu    sync.Mutex
	next  atomic.Uint64
	conns map[uint64]*connInfo
	wg    sync.WaitGroup
}

func newConnTable() *connTable { return &connTable{conns: map[uint64]*connInfo{}} }

func (t *connTable) add(ci *connInfo, cs ...net.Conn) {
	ci.ID = t.next.Add(1)
	ci.Start = time.Now()
	ci.closers = cs
	t.wg.Add(1)
	t.mu.Lock()
	t.conns[ci.ID] = ci
	t.mu.Unlock()
}

func (t *connTable) remove(ci *connInfo) {
	t.mu.Lock()
	delete(t.conns, ci.ID)
	t.mu.Unlock()
	t.wg.Done()
}

func (t *connTable) snapshot() []ConnInfo {
	t.mu.Lock()
	out := make([]ConnInfo, 0, len(t.conns))
	for _, c := range t.conns {
		cp := c.ConnInfo
		cp.Sent = c.sent.n.Load()
		cp.Received = c.recv.n.Load()
		out = append(out, cp)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
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
	for _, c := range t.conns {
		for _, cl := range c.closers {
			_ = cl.Close()
		}
	}
	t.mu.Unlock()
	<-done
}
