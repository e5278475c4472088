package upstream

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"
)

// HashInput is what a request's hash key can come from; the waypoint fills
// the lookups from the request. A nil lookup finds nothing.
type HashInput struct {
	// Header returns the values of a request header (case-insensitive name).
	Header func(name string) []string
	// Cookie returns the value of a request cookie.
	Cookie func(name string) (string, bool)
	// Query returns the first value of a query parameter.
	Query func(name string) (string, bool)
	// Source is the downstream client's address: its IP for useSourceIp, and
	// with its port the seed of a generated cookie.
	Source netip.AddrPort
}

// SetCookie is a cookie the waypoint must set on the response (Set-Cookie,
// HttpOnly), so that the client's next requests hash the same way.
type SetCookie struct {
	Name, Value, Path string
	// MaxAge is the cookie's Max-Age; 0 makes a session cookie.
	MaxAge     time.Duration
	Attributes []CookieAttribute
}

// Key computes the request's hash key as Envoy's hash policies do: xxHash64
// of the header's values (sorted, concatenated), the cookie's value, the
// source IP, or the query parameter's value. ok is false without a key (the
// pick is then random). For a cookie with a TTL that the request lacks, Key
// makes one like Envoy: its value is the hex xxHash64 of the client's
// address and port, the key is the hash of that value, and set is the cookie
// to add to the response.
func (hp *HashPolicy) Key(in HashInput) (key uint64, ok bool, set *SetCookie) {
	if hp == nil {
		return 0, false, nil
	}
	switch hp.Kind {
	case HashHeader:
		if in.Header == nil {
			return 0, false, nil
		}
		vals := in.Header(hp.Name)
		switch len(vals) {
		case 0:
			return 0, false, nil
		case 1:
			return xxhash.Sum64String(vals[0]), true, nil
		}
		vals = slices.Sorted(slices.Values(vals))
		d := xxhash.New()
		for _, v := range vals {
			_, _ = d.WriteString(v)
		}
		return d.Sum64(), true, nil
	case HashCookie:
		if in.Cookie != nil {
			if v, found := in.Cookie(hp.Name); found {
				return xxhash.Sum64String(v), true, nil
			}
		}
		if !hp.HasTTL || !in.Source.IsValid() {
			return 0, false, nil
		}
		v := hex16(xxhash.Sum64String(in.Source.String()))
		return xxhash.Sum64String(v), true, &SetCookie{Name: hp.Name, Value: v, Path: hp.Path,
			MaxAge: hp.TTL, Attributes: slices.Clone(hp.Attributes)}
	case HashSourceIP:
		if !in.Source.IsValid() {
			return 0, false, nil
		}
		return xxhash.Sum64String(in.Source.Addr().String()), true, nil
	case HashQueryParam:
		if in.Query == nil {
			return 0, false, nil
		}
		if v, found := in.Query(hp.Name); found {
			return xxhash.Sum64String(v), true, nil
		}
	}
	return 0, false, nil
}

// hex16 is Envoy's Hex::uint64ToHex: 16 lowercase hex digits.
func hex16(v uint64) string {
	s := strconv.FormatUint(v, 16)
	const zeros = "0000000000000000"
	return zeros[:16-len(s)] + s
}

// Envoy's retry back-off defaults.
const (
	DefaultRetryBase = 25 * time.Millisecond
	retryMaxFactor   = 10
)

// Backoff is Envoy's fully jittered exponential retry back-off
// (JitteredExponentialBackOffStrategy): retry k (from 1) waits a uniformly
// random time in [0, min(base*2^(k-1), max)). base 0 is 25 ms; max 0 is 10x
// base (and never below base). Envoy's router documentation gives
// [0, (2^k-1)*base) instead; its code, followed here, doubles the interval.
// rnd nil uses math/rand/v2.
func Backoff(base, maxInterval time.Duration, retry int, rnd func() uint64) time.Duration {
	if base <= 0 {
		base = DefaultRetryBase
	}
	if maxInterval <= 0 {
		maxInterval = retryMaxFactor * base
	}
	maxInterval = max(maxInterval, base)
	k := max(retry-1, 0)
	interval := maxInterval
	if k < 62 && base <= maxInterval>>k {
		interval = min(base<<k, maxInterval)
	}
	if rnd == nil {
		rnd = rand.Uint64
	}
	return time.Duration(rnd() % uint64(interval))
}
