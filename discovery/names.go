package discovery

import (
	"fmt"
	"net/netip"
	"strings"
)

// Kubernetes name and label rules, checked without regexps so that Build
// stays cheap on large models.

func isAlnumLower(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func isAlnum(c byte) bool { return isAlnumLower(c) || c >= 'A' && c <= 'Z' }

// isDNS1123Label: at most 63 of [a-z0-9-], starting and ending alphanumeric.
func isDNS1123Label(s string) bool { return isName(s, isAlnumLower, "-") }

// isName: 1 to 63 characters, alnum at both ends and alnum or one of inner
// in between.
func isName(s string, alnum func(byte) bool, inner string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if alnum(c) {
			continue
		}
		if strings.IndexByte(inner, c) >= 0 && i > 0 && i < len(s)-1 {
			continue
		}
		return false
	}
	return true
}

// isDNS1123Subdomain: at most 253 characters of dot-separated DNS-1123 labels.
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

// isQualifiedName is a label key's name part or a non-empty label value: at
// most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric.
func isQualifiedName(s string) bool { return isName(s, isAlnum, "-_.") }

func isLabelKey(k string) bool {
	prefix, name, found := strings.Cut(k, "/")
	if !found {
		return isQualifiedName(k)
	}
	return isDNS1123Subdomain(prefix) && isQualifiedName(name)
}

func isLabelValue(v string) bool { return v == "" || isQualifiedName(v) }

const (
	msgRequired  = "must be set"
	msgLabel     = "%q is not a valid DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
	msgSubdomain = "%q is not a valid DNS-1123 subdomain (at most 253 characters of lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit)"
	msgLabelKey  = "%q is not a valid label key (an optional DNS-1123 subdomain and '/', then at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
	msgLabelVal  = "%q is not a valid label value (at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
)

func checkLabelName(errs *fieldErrors, path, v string) {
	checkName(errs, path, v, isDNS1123Label, msgLabel)
}

func checkSubdomain(errs *fieldErrors, path, v string) {
	checkName(errs, path, v, isDNS1123Subdomain, msgSubdomain)
}

// checkName records an error when the required name v is empty or not valid
// (msg, formatted with v, says why).
func checkName(errs *fieldErrors, path, v string, valid func(string) bool, msg string) {
	switch {
	case v == "":
		errs.Add(path, msgRequired)
	case !valid(v):
		errs.Add(path, fmt.Sprintf(msg, v))
	}
}

// labelPath names one entry of a label map, e.g. `labels["app"]`.
func labelPath(base, key string) string { return fmt.Sprintf("%s[%q]", base, key) }

func checkLabels(errs *fieldErrors, path string, labels map[string]string) {
	for _, k := range sortedKeys(labels) {
		v := labels[k]
		p := labelPath(path, k)
		if !isLabelKey(k) {
			errs.Add(p, fmt.Sprintf(msgLabelKey, k))
		}
		if !isLabelValue(v) {
			errs.Add(p, fmt.Sprintf(msgLabelVal, v))
		}
	}
}

// checkLocality checks that each part of l is a label value, as the Kubernetes node
// labels it comes from are.
func checkLocality(errs *fieldErrors, path string, l Locality) {
	for _, part := range []struct{ name, v string }{{"region", l.Region}, {"zone", l.Zone}, {"subzone", l.Subzone}} {
		if !isLabelValue(part.v) {
			errs.Add(path+"."+part.name, fmt.Sprintf(msgLabelVal, part.v))
		}
	}
}

// checkAddr validates an address and returns it in canonical form (IPv4 in
// IPv6 unmapped), or false after recording an error.
func checkAddr(errs *fieldErrors, path string, a netip.Addr) (netip.Addr, bool) {
	if !a.IsValid() {
		errs.Add(path, "not a valid IP address")
		return a, false
	}
	if a.Zone() != "" {
		errs.Add(path, fmt.Sprintf("%q has a zone, which is not allowed", a.String()))
		return a, false
	}
	if a.IsUnspecified() {
		errs.Add(path, fmt.Sprintf("%s is the unspecified address", a))
		return a, false
	}
	return a.Unmap(), true
}
