package ztunnel

import (
	"errors"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Per-peer caps keep one authenticated peer from taking all of ztunnel's file
// descriptors and goroutines: concurrent inbound HBONE streams from one identity
// (over all its connections), and concurrent upstream sockets ztunnel holds open to
// local pods on one identity's behalf (inbound HBONE and same node). Generous: a
// busy peer is far below them (Config.MaxStreamsPerPeer, MaxUpstreamsPerPeer).
const (
	defaultMaxStreamsPerPeer   = 32768
	defaultMaxUpstreamsPerPeer = 32768
)

// errPeerLimit marks a connection refused because its peer is at a cap (503).
var errPeerLimit = errors.New("peer at its limit")

// limitKind is one of the per-peer caps.
type limitKind uint8

const (
	limitStreams limitKind = iota
	limitUpstreams
	numLimits
)

// String is the limit label of ambit_peer_limit_refused_total.
func (k limitKind) String() string {
	if k == limitStreams {
		return "streams"
	}
	return "upstreams"
}

// peerHold is what a connection holds of its peer's slots, given back when it ends.
type peerHold struct {
	peer spiffeid.ID
	held [numLimits]bool
}

// peerLimits counts each peer's slots in use. A mutex and a map: two short critical
// sections per connection, no allocation once the map has room (entries are values,
// deleted when a peer holds nothing).
type peerLimits struct {
	max [numLimits]int // 0: no cap

	mu  sync.Mutex
	use map[spiffeid.ID][numLimits]int32
}

func newPeerLimits(maxStreams, maxUpstreams int) *peerLimits {
	return &peerLimits{
		max: [numLimits]int{limitStreams: maxStreams, limitUpstreams: maxUpstreams},
		use: map[spiffeid.ID][numLimits]int32{},
	}
}

// acquire takes one of peer's slots of kind k for rec, or fails with errPeerLimit when
// the peer holds the maximum already. A connection without an authenticated peer (zero
// ID) is not counted; rec's slots all belong to one peer.
func (l *peerLimits) acquire(rec *record, peer spiffeid.ID, k limitKind) error {
	if l == nil || peer.IsZero() || l.max[k] <= 0 {
		return nil
	}
	if h := &rec.held; h.held != [numLimits]bool{} && h.peer != peer {
		return fmt.Errorf("slots of %s and %s for one connection", h.peer, peer) // a bug, not a peer's doing
	}
	l.mu.Lock()
	u := l.use[peer]
	if int(u[k]) >= l.max[k] {
		l.mu.Unlock()
		return fmt.Errorf("%s holds %d concurrent %s: %w", peer, l.max[k], k, errPeerLimit)
	}
	u[k]++
	l.use[peer] = u
	l.mu.Unlock()
	rec.held.peer = peer
	rec.held.held[k] = true
	return nil
}

// release gives back the slots rec holds; it is safe to call more than once.
func (l *peerLimits) release(rec *record) {
	h := &rec.held
	if l == nil || h.held == [numLimits]bool{} {
		return
	}
	l.mu.Lock()
	u := l.use[h.peer]
	for k, held := range h.held {
		if held && u[k] > 0 {
			u[k]--
		}
	}
	if u == [numLimits]int32{} {
		delete(l.use, h.peer)
	} else {
		l.use[h.peer] = u
	}
	l.mu.Unlock()
	*h = peerHold{}
}

// inUse reports peer's slots of kind k in use.
func (l *peerLimits) inUse(peer spiffeid.ID, k limitKind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.use[peer][k])
}
