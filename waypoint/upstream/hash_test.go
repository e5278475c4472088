package upstream

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

func TestBackoff(t *testing.T) {
	const base, capped = 25 * time.Millisecond, 250 * time.Millisecond
	// Retry k draws from [0, min(base*2^(k-1), 10*base)).
	intervals := []time.Duration{25, 50, 100, 200, 250, 250}
	for k, iv := range intervals {
		iv *= time.Millisecond
		for _, r := range []uint64{0, 1, uint64(iv) - 1, uint64(iv), uint64(iv) + 7, 1<<64 - 1} {
			got := Backoff(base, 0, k+1, func() uint64 { return r })
			if want := time.Duration(r % uint64(iv)); got != want {
				t.Errorf("retry %d, random %d: %v, want %v", k+1, r, got, want)
			}
			if got < 0 || got >= iv {
				t.Errorf("retry %d: %v out of [0, %v)", k+1, got, iv)
			}
		}
	}
	if got := Backoff(0, 0, 1, func() uint64 { return uint64(time.Hour) - 1 }); got != 25*time.Millisecond-1 {
		t.Errorf("default base: %v", got)
	}
	if got := Backoff(time.Second, 1500*time.Millisecond, 3, func() uint64 { return 1<<63 + 12345 }); got >= 1500*time.Millisecond {
		t.Errorf("configured max: %v", got)
	}
	if got := Backoff(base, 0, 100, func() uint64 { return uint64(capped) - 1 }); got != capped-1 {
		t.Errorf("retry 100: %v", got)
	}
}

func TestHashKey(t *testing.T) {
	src := netip.MustParseAddrPort("10.1.2.3:4567")
	in := HashInput{
		Header: func(name string) []string {
			switch name {
			case "x-one":
				return []string{"a"}
			case "x-two":
				return []string{"b", "a"}
			}
			return nil
		},
		Cookie: func(name string) (string, bool) { return "c-value", name == "present" },
		Query:  func(name string) (string, bool) { return "q", name == "user" },
		Source: src,
	}
	tests := []struct {
		name   string
		hp     *HashPolicy
		want   uint64
		ok     bool
		cookie *SetCookie
	}{
		{"nil policy", nil, 0, false, nil},
		{"no key", &HashPolicy{Kind: HashNone}, 0, false, nil},
		{"header", &HashPolicy{Kind: HashHeader, Name: "x-one"}, xxhash.Sum64String("a"), true, nil},
		{"header values sorted", &HashPolicy{Kind: HashHeader, Name: "x-two"}, xxhash.Sum64String("ab"), true, nil},
		{"no header", &HashPolicy{Kind: HashHeader, Name: "x-none"}, 0, false, nil},
		{"cookie", &HashPolicy{Kind: HashCookie, Name: "present", HasTTL: true}, xxhash.Sum64String("c-value"), true, nil},
		{"no cookie, no ttl", &HashPolicy{Kind: HashCookie, Name: "absent"}, 0, false, nil},
		{"no cookie, ttl", &HashPolicy{Kind: HashCookie, Name: "absent", Path: "/p", TTL: time.Minute, HasTTL: true},
			xxhash.Sum64String(hex16(xxhash.Sum64String("10.1.2.3:4567"))), true,
			&SetCookie{Name: "absent", Value: hex16(xxhash.Sum64String("10.1.2.3:4567")), Path: "/p", MaxAge: time.Minute}},
		{"source ip", &HashPolicy{Kind: HashSourceIP}, xxhash.Sum64String("10.1.2.3"), true, nil},
		{"query", &HashPolicy{Kind: HashQueryParam, Name: "user"}, xxhash.Sum64String("q"), true, nil},
		{"no query", &HashPolicy{Kind: HashQueryParam, Name: "other"}, 0, false, nil},
	}
	for _, tt := range tests {
		key, ok, set := tt.hp.Key(in)
		if key != tt.want || ok != tt.ok {
			t.Errorf("%s: %x %v, want %x %v", tt.name, key, ok, tt.want, tt.ok)
		}
		if (set == nil) != (tt.cookie == nil) || set != nil && (*set).Value != tt.cookie.Value ||
			set != nil && (set.Name != tt.cookie.Name || set.Path != tt.cookie.Path || set.MaxAge != tt.cookie.MaxAge) {
			t.Errorf("%s: cookie %+v, want %+v", tt.name, set, tt.cookie)
		}
	}
	if v := hex16(0xab); v != "00000000000000ab" {
		t.Errorf("hex16: %s", v)
	}
}

func TestCookieKeepsAffinity(t *testing.T) {
	hp := &HashPolicy{Kind: HashCookie, Name: "s", TTL: time.Hour, HasTTL: true}
	c := newCluster(t, ClusterConfig{Policy: lbPolicy(RingHash)}, nil, endpoints(5)...)
	// The first request has no cookie: the one made for it, sent back, picks
	// the same host.
	key, _, set := hp.Key(HashInput{Source: netip.MustParseAddrPort("10.9.9.9:1000")})
	first, _ := c.Pick(PickRequest{Hash: key, HasHash: true})
	again, ok, _ := hp.Key(HashInput{Source: netip.MustParseAddrPort("10.9.9.9:2000"),
		Cookie: func(string) (string, bool) { return set.Value, true }})
	second, _ := c.Pick(PickRequest{Hash: again, HasHash: ok})
	if first != second {
		t.Errorf("first %v, then %v with the cookie", first.Addr(), second.Addr())
	}
}
