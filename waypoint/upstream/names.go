package upstream

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Name rules of Istio's validation, without regexps.

func isAlnumLower(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func isAlnum(c byte) bool { return isAlnumLower(c) || c >= 'A' && c <= 'Z' }

// isName: 1 to 63 characters, alnum at both ends, alnum or one of inner between.
func isName(s string, alnum func(byte) bool, inner string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if alnum(c) || strings.IndexByte(inner, c) >= 0 && i > 0 && i < len(s)-1 {
			continue
		}
		return false
	}
	return true
}

func isDNS1123Label(s string) bool { return isName(s, isAlnumLower, "-") }

func isDNS1123Subdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		if !isDNS1123Label(part) {
			return false
		}
	}
	return true
}

func isLabelKey(k string) bool {
	prefix, name, found := strings.Cut(k, "/")
	if !found {
		return isName(k, isAlnum, "-_.")
	}
	return isDNS1123Subdomain(prefix) && isName(name, isAlnum, "-_.")
}

func isLabelValue(v string) bool { return v == "" || isName(v, isAlnum, "-_.") }

// isWildcardLabel is Istio's IsWildcardDNS1123Label: "*", or a DNS-1123 label
// optionally prefixed by "*" or "*-".
func isWildcardLabel(s string) bool {
	if s == "*" {
		return true
	}
	rest, ok := strings.CutPrefix(s, "*")
	if ok {
		rest = strings.TrimPrefix(rest, "-")
	}
	return len(s) <= 63 && isDNS1123Label(rest)
}

// checkDomainLabels is Istio's ValidateDNS1123Labels: DNS-1123 labels, an empty
// last label allowed (a trailing dot), a top-level label not all digits.
func checkDomainLabels(domain, labels string) string {
	parts := strings.Split(labels, ".")
	if _, err := strconv.Atoi(parts[len(parts)-1]); err == nil {
		return fmt.Sprintf("%q: the top-level label cannot be all digits", domain)
	}
	for i, l := range parts {
		if i == len(parts)-1 && l == "" && i > 0 {
			return ""
		}
		if !isDNS1123Label(l) {
			return fmt.Sprintf("%q: label %q is not a valid DNS-1123 label", domain, l)
		}
	}
	return ""
}

func checkDomainLength(domain string) string {
	switch {
	case domain == "":
		return "must be set"
	case len(domain) > 255:
		return fmt.Sprintf("%q is longer than 255 characters", domain)
	}
	return ""
}

// checkWildcardDomain is Istio's ValidateWildcardDomain: a FQDN or a short
// name whose first label may be a wildcard.
func checkWildcardDomain(domain string) string {
	if msg := checkDomainLength(domain); msg != "" {
		return msg
	}
	first, rest, dot := strings.Cut(domain, ".")
	if !isWildcardLabel(first) {
		return fmt.Sprintf("%q: label %q is not a valid DNS-1123 label or wildcard", domain, first)
	}
	if dot {
		return checkDomainLabels(domain, rest)
	}
	return ""
}

func checkFQDN(domain string) string {
	if msg := checkDomainLength(domain); msg != "" {
		return msg
	}
	return checkDomainLabels(domain, domain)
}

// isToken: an RFC 7230 token (header and cookie names).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

func isHeaderName(s string) bool { return isToken(s) }

// isPrime is trial division, as Envoy's Primes::isPrime.
func isPrime(x uint64) bool {
	if x < 2 {
		return false
	}
	if x < 4 {
		return true
	}
	if x%2 == 0 {
		return false
	}
	limit := uint64(math.Sqrt(float64(x)))
	for f := uint64(3); f <= limit; f += 2 {
		if x%f == 0 {
			return false
		}
	}
	return true
}
