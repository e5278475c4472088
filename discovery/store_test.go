package discovery

import (
	"net/netip"
	"sync"
	"testing"
)

func TestStoreBeforeSet(t *testing.T) {
	st := NewStore()
	s := st.Load()
	if s == nil || s.Version != 0 || st.Synced() {
		t.Fatalf("new store: snapshot %v, synced %v; want empty version 0, not synced", s, st.Synced())
	}
	if s.WorkloadByIP(netip.MustParseAddr("198.18.1.1")) != nil {
		t.Error("empty snapshot found a workload")
	}
}

// pending reports whether ch holds a notification, consuming it.
func pending(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestStoreWatchCoalesces(t *testing.T) {
	st := NewStore()
	ch1, cancel1 := st.Watch()
	ch2, cancel2 := st.Watch()
	defer cancel2()

	for range 3 {
		st.Set(mustBuild(t, Input{}, EnrollmentOptions{}))
	}
	if !st.Synced() || st.Load().Version != 3 {
		t.Fatalf("after 3 Sets: synced %v, version %d", st.Synced(), st.Load().Version)
	}
	for i, ch := range []<-chan struct{}{ch1, ch2} {
		if !pending(ch) {
			t.Errorf("watcher %d: no notification after Set", i)
		}
		if pending(ch) {
			t.Errorf("watcher %d: notifications not coalesced", i)
		}
	}

	cancel1()
	cancel1() // idempotent
	st.Set(nil)
	if pending(ch1) {
		t.Error("cancelled watcher notified")
	}
	if !pending(ch2) {
		t.Error("remaining watcher not notified")
	}
	if s := st.Load(); s == nil || s.Version != 4 || len(s.Workloads) != 0 {
		t.Errorf("Set(nil) published %+v, want empty snapshot version 4", s)
	}
}

func TestStoreSetPublishedSnapshotCopies(t *testing.T) {
	st := NewStore()
	s := mustBuild(t, Input{}, EnrollmentOptions{})
	st.Set(s)
	if st.Load() != s || s.Version != 1 {
		t.Fatalf("fresh snapshot: Load() = %p (version %d), want %p with version 1", st.Load(), st.Load().Version, s)
	}
	st.Set(s)
	if st.Load() == s || s.Version != 1 || st.Load().Version != 2 {
		t.Errorf("re-Set modified the published snapshot (version %d) or did not copy it", s.Version)
	}
}

// TestStoreConcurrent is for the race detector: readers, watchers and a
// writer at once.
func TestStoreConcurrent(t *testing.T) {
	st := NewStore()
	in := Input{Workloads: []*Workload{{Name: "a", Namespace: "ns", IPs: addrs("198.18.1.1")}}}
	ip := netip.MustParseAddr("198.18.1.1")
	var wg sync.WaitGroup
	const sets = 200
	done := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			ch, cancel := st.Watch()
			defer cancel()
			for {
				select {
				case <-done:
					return
				case <-ch:
					if s := st.Load(); s.WorkloadByIP(ip) == nil {
						t.Error("published snapshot misses workload")
						return
					}
				}
			}
		})
	}
	for range sets {
		st.Set(mustBuild(t, in, EnrollmentOptions{}))
	}
	close(done)
	wg.Wait()
	if v := st.Load().Version; v != sets {
		t.Errorf("version = %d, want %d", v, sets)
	}
}
