package route

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		in, want string // want "" means an error
	}{
		{"/", "/"},
		{"/a/b", "/a/b"},
		{"/a/b/", "/a/b/"},
		// CVE-2019-9901: traversal.
		{"/public/../admin", "/admin"},
		{"/../admin", "/admin"},
		{"/../../../etc/passwd", "/etc/passwd"},
		{"/a/./b", "/a/b"},
		{"/a/.", "/a/"},
		{"/a/..", "/"},
		{"/a/b/..", "/a/"},
		{"/%2e%2e/admin", "/admin"},
		{"/public/%2E%2E/admin", "/admin"},
		{"/public/.%2e/admin", "/admin"},
		{"/%2e/admin", "/admin"},
		{"/.well-known/x", "/.well-known/x"},
		{"/a..b/..c", "/a..b/..c"},
		// CVE-2021-31920: slashes, escaped slashes and backslashes.
		{"//admin", "/admin"},
		{"/public//admin", "/public/admin"},
		{"///a////b//", "/a/b/"},
		{"/a//../b", "/a/b"},
		{"/public/%2F../admin", "/public/%2F../admin"}, // one segment named "%2F.."
		{"/a%2fb", "/a%2Fb"},
		{"/a%2Fb", "/a%2Fb"},
		{"/a%5cb", "/a%5Cb"},
		{"\\admin", "/admin"},
		{"/public\\..\\admin", "/admin"},
		{"/a\\\\b", "/a/b"},
		// Unreserved characters are decoded, once.
		{"/%61dmin", "/admin"},
		{"/%7Euser", "/~user"},
		{"/%2D%5F%30", "/-_0"},
		{"/%252e%252e/x", "/%252e%252e/x"},
		{"/%25", "/%25"},
		{"/caf%c3%a9", "/caf%C3%A9"},
		// CVE-2021-39156: fragments are dropped.
		{"/user/profile#x", "/user/profile"},
		{"/admin#/../public", "/admin"},
		{"/a/b%23c", "/a/b%23c"},
		// Errors: NUL, bad escapes, not absolute, raw bytes outside printable ASCII.
		{"/a%00b", ""},
		{"/a%0", ""},
		{"/a%zz", ""},
		{"/a%", ""},
		{"a/b", ""},
		{"", ""},
		{"#/a", ""},
		{"*", ""},
		{"/a b", ""},
		{"/a\x00b", ""},
		{"/a\tb", ""},
		{"/a\x7f", ""},
		{"/caf\xc3\xa9", ""},
	}
	for _, tt := range tests {
		got, err := NormalizePath(tt.in)
		if tt.want == "" {
			if err == nil || !errors.Is(err, ErrInvalidPath) {
				t.Errorf("NormalizePath(%q) = %q, %v; want ErrInvalidPath", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestNormalizePathNoAllocWhenClean(t *testing.T) {
	p := "/api/v1/users/42"
	if n := testing.AllocsPerRun(100, func() { _, _ = NormalizePath(p) }); n != 0 {
		t.Fatalf("NormalizePath(clean) allocates %v times", n)
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "//x", "/%2e%2e/", "\\a", "/a#b", "/%00", "/%7e", "/a/./b/../../c/", "/%2f%5C"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := NormalizePath(in)
		if err != nil {
			return
		}
		if !strings.HasPrefix(out, "/") || strings.Contains(out, "//") || strings.ContainsAny(out, "#\\") {
			t.Fatalf("NormalizePath(%q) = %q", in, out)
		}
		for _, seg := range strings.Split(out, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("NormalizePath(%q) = %q keeps a dot segment", in, out)
			}
		}
		again, err := NormalizePath(out)
		if err != nil || again != out {
			t.Fatalf("NormalizePath not stable: %q -> %q -> %q, %v", in, out, again, err)
		}
	})
}
