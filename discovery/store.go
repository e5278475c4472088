package discovery

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Store holds the current snapshot and tells watchers when it changes.
// Readers call Load on every decision; it is one atomic load.
//
// Race-free consumer pattern: register with Watch first, then Load, then
// Load again after each notification. Notifications coalesce, so a slow
// watcher sees only that something changed, never a backlog.
type Store struct {
	cur    atomic.Pointer[Snapshot]
	synced atomic.Bool

	mu       sync.Mutex
	version  uint64
	watchers map[*chan struct{}]struct{}
}

// NewStore returns a store holding an empty snapshot (Version 0).
func NewStore() *Store {
	st := &Store{watchers: make(map[*chan struct{}]struct{})}
	st.cur.Store(emptySnapshot())
	return st
}

// Load returns the current snapshot; never nil.
func (st *Store) Load() *Snapshot { return st.cur.Load() }

// Set publishes s with the next version and notifies watchers. A snapshot
// fresh from Build (Version 0) is published as is, with its Version set;
// one that was already published is copied first so that readers of the
// old version never see it change. A nil s publishes an empty snapshot.
func (st *Store) Set(s *Snapshot) {
	if s == nil {
		s = emptySnapshot()
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if s.Version != 0 {
		c := *s
		s = &c
	}
	st.version++
	s.Version = st.version
	st.cur.Store(s)
	st.synced.Store(true)
	for ch := range st.watchers {
		select {
		case *ch <- struct{}{}:
		default: // a notification is already pending
		}
	}
}

// Synced reports whether Set was called at least once.
func (st *Store) Synced() bool { return st.synced.Load() }

// Watch returns a channel that receives a value after each Set (several
// Sets may coalesce into one value), and a cancel function that
// unregisters it. cancel is idempotent and does not close the channel.
func (st *Store) Watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	st.mu.Lock()
	st.watchers[&ch] = struct{}{}
	st.mu.Unlock()
	return ch, func() {
		st.mu.Lock()
		delete(st.watchers, &ch)
		st.mu.Unlock()
	}
}

// Follow calls fn with the current snapshot after each change (coalesced as Watch's)
// until ctx ends, and returns nil then: the body of a component's model loop.
func (st *Store) Follow(ctx context.Context, fn func(*Snapshot)) error {
	ch, cancel := st.Watch()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
			fn(st.Load())
		}
	}
}

// WaitSynced waits until the first Set, or ctx ends.
func (st *Store) WaitSynced(ctx context.Context) error {
	ch, cancel := st.Watch()
	defer cancel()
	for !st.Synced() {
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("load mesh model: %w", context.Cause(ctx))
		}
	}
	return nil
}
