package waypoint

import (
	"context"
	"net"
	"sync"
	"sync/atomic"

	"github.com/ambitmesh/ambit/discovery"
)

// tcpStream is a live TCP stream, re-authorized when the model changes.
type tcpStream struct {
	in      *inbound
	closers [2]net.Conn // the client's stream and the upstream connection
	revoked atomic.Bool
}

// tcpStreams are the waypoint's live TCP streams.
type tcpStreams struct {
	mu   sync.Mutex
	live map[*tcpStream]struct{}
}

func (s *tcpStreams) add(t *tcpStream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live == nil {
		s.live = map[*tcpStream]struct{}{}
	}
	s.live[t] = struct{}{}
}

func (s *tcpStreams) remove(t *tcpStream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, t)
}

func (s *tcpStreams) list() []*tcpStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*tcpStream, 0, len(s.live))
	for t := range s.live {
		out = append(out, t)
	}
	return out
}

// recheckLoop re-authorizes the live TCP streams whenever the model changes and
// closes those that no longer pass, or whose destination is no longer bound to this
// waypoint. (HTTP streams are re-decided per request.)
func (w *Waypoint) recheckLoop(ctx context.Context) error {
	return w.store.Follow(ctx, func(*discovery.Snapshot) { w.recheck() })
}

func (w *Waypoint) recheck() {
	for _, t := range w.tcp.list() {
		reason := ""
		in, err := w.refresh(t.in)
		switch {
		case err != nil:
			reason = err.Error()
		case in == t.in:
			continue // the model it was decided with
		default:
			if d := in.authorize(nil); !d.Allow {
				reason = d.String()
			}
		}
		if reason == "" {
			t.in = in
			continue
		}
		if !t.revoked.CompareAndSwap(false, true) {
			continue
		}
		w.log.Warn(msgPolicyClosed, keySrc, t.in.client.String(), keyIdentity, t.in.peer,
			keyAuthority, t.in.t.authority.String(), keyReason, reason)
		for _, c := range t.closers {
			_ = c.Close()
		}
	}
}
