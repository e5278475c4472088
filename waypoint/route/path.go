package route

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidPath reports a request path that cannot be normalized; the caller
// answers 400.
var ErrInvalidPath = errors.New("invalid request path")

// NormalizePath returns the one form of a request path that routing,
// authorization and the forwarded request line all use. raw is the path of the
// request target, the part before '?'. It follows Istio's MERGE_SLASHES mode:
//
//   - anything from '#' on is dropped (CVE-2021-39156);
//   - '\' becomes '/';
//   - %HH escapes of unreserved characters (ALPHA, DIGIT, '-', '.', '_', '~') are
//     decoded, once; other escapes stay, with upper-case hex digits, so %2F and
//     %5C remain inside their segment;
//   - "." and ".." segments are removed as in RFC 3986 section 5.2.4 (after the
//     decoding, so %2e%2e counts), ".." never climbing above the root;
//   - runs of '/' are merged into one.
//
// The path must start with '/' (or '\\'). %00, a '%' not followed by two hex digits, and
// bytes outside printable ASCII (controls, space, DEL, non-ASCII) are errors
// wrapping ErrInvalidPath. The result is stable: normalizing it again returns it
// unchanged. A path that needs no change is returned without allocating.
func NormalizePath(raw string) (string, error) {
	if i := strings.IndexByte(raw, '#'); i >= 0 {
		raw = raw[:i]
	}
	if raw == "" || raw[0] != '/' && raw[0] != '\\' {
		return "", fmt.Errorf("%w: %q does not start with '/'", ErrInvalidPath, raw)
	}
	clean := true
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c <= ' ' || c >= 0x7f:
			return "", fmt.Errorf("%w: byte 0x%02x at %d", ErrInvalidPath, c, i)
		case c == '%' || c == '\\':
			clean = false
		case c == '/' && i+1 < len(raw) && (raw[i+1] == '/' || raw[i+1] == '.'):
			clean = false
		}
	}
	if clean {
		return raw, nil
	}
	decoded, err := decodeUnreserved(raw)
	if err != nil {
		return "", err
	}
	return mergeSlashes(removeDotSegments(decoded)), nil
}

// decodeUnreserved decodes %HH of unreserved characters, turns '\' into '/' and
// upper-cases the hex digits of the escapes it keeps.
func decodeUnreserved(s string) (string, error) {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\\':
			b.WriteByte('/')
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return "", fmt.Errorf("%w: bad escape at %d", ErrInvalidPath, i)
			}
			v := unhex(s[i+1])<<4 | unhex(s[i+2])
			switch {
			case v == 0:
				return "", fmt.Errorf("%w: %%00 at %d", ErrInvalidPath, i)
			case isUnreserved(v):
				b.WriteByte(v)
			default:
				b.WriteByte('%')
				b.WriteByte(upperHex(s[i+1]))
				b.WriteByte(upperHex(s[i+2]))
			}
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// removeDotSegments applies RFC 3986 section 5.2.4 to an absolute path. Empty
// segments are kept (a later merge removes them), so "/a//../b" is "/a/b", as
// Envoy's normalize_path followed by merge_slashes gives.
func removeDotSegments(p string) string {
	if !strings.Contains(p, "/.") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := segs[:0]
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			trailing = trailing || last
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = trailing || last
		default:
			out = append(out, s)
		}
	}
	r := "/" + strings.Join(out, "/")
	if trailing && !strings.HasSuffix(r, "/") {
		r += "/"
	}
	return r
}

func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	b := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && len(b) > 0 && b[len(b)-1] == '/' {
			continue
		}
		b = append(b, p[i])
	}
	return string(b)
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}
