package waypoint

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 fast path's parser (-datapath fast, h1fast.go): a message head read line
// by line from a bufio.Reader into one buffer, then split into the request or status
// line and an http.Header (the routing and policy code take one).

// maxHeadBytes bounds a request head, as the std path's MaxHeaderBytes (plus net/http's
// 4 KiB of slack) does: past it the answer is 431.
const maxHeadBytes = 60<<10 + 4096

var (
	errHeadTooLarge = errors.New("message head too large")
	errMalformed    = errors.New("malformed HTTP message")
	// errFallback: valid, but left to the std path (absolute form, HTTP/1.0, folded
	// header lines, Transfer-Encoding on a request, Upgrade, Expect ...).
	errFallback = errors.New("not handled by the fast path")
)

// readHead appends one message head (up to and including its empty line) to buf. A
// leading empty line is skipped, as RFC 9112 2.2 allows.
func readHead(br *bufio.Reader, buf []byte, limit int) ([]byte, error) {
	start := len(buf)
	for {
		line, err := br.ReadSlice('\n')
		if len(buf)-start+len(line) > limit || errors.Is(err, bufio.ErrBufferFull) {
			return buf, errHeadTooLarge
		}
		if err != nil {
			return buf, err
		}
		if len(buf) == start && (len(line) == 1 || (len(line) == 2 && line[0] == '\r')) {
			continue // an empty line before the request line
		}
		buf = append(buf, line...)
		if len(line) == 1 || (len(line) == 2 && line[0] == '\r') {
			return buf, nil
		}
	}
}

// head is a parsed message head; its strings are copies (one per head).
type head struct {
	method, target string // request
	code           int    // response
	proto11        bool   // HTTP/1.1 (a response may be HTTP/1.0)
	header         http.Header
	contentLength  int64 // -1: none given
	chunked        bool  // Transfer-Encoding: chunked (responses)
	closeConn      bool  // Connection: close (or HTTP/1.0 without keep-alive)
	host           string
}

// nextLine splits s at its first line, CRLF or LF removed.
func nextLine(s string) (line, rest string) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return s, ""
	}
	line, rest = s[:i], s[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// parseRequestHead parses a request head read by readHead.
func parseRequestHead(b []byte) (*head, error) {
	h := &head{}
	return h, h.parseRequest(b)
}

// reset empties h for the next message, keeping its header map.
func (h *head) reset() {
	hdr := h.header
	clear(hdr)
	*h = head{header: hdr}
}

// parseRequest parses a request head read by readHead into h, reusing h's header map.
// The head is copied into one string; method, target and fields are parts of it.
func (h *head) parseRequest(b []byte) error {
	h.reset()
	line, rest := nextLine(string(b))
	sp1 := strings.IndexByte(line, ' ')
	if sp1 <= 0 {
		return errMalformed
	}
	sp2 := strings.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return errMalformed
	}
	sp2 += sp1 + 1
	method, target, proto := line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	for i := 0; i < len(method); i++ {
		if !httpguts.IsTokenRune(rune(method[i])) {
			return errMalformed
		}
	}
	if len(target) == 0 {
		return errMalformed
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c == 0x7f {
			return errMalformed
		}
	}
	switch proto {
	case "HTTP/1.1":
	case "HTTP/1.0":
		return errFallback
	default:
		return errMalformed
	}
	if target[0] != '/' {
		return errFallback // absolute form, "*", garbage: the std path decides
	}
	h.method, h.target, h.proto11 = method, target, true
	if err := parseFields(rest, h, true); err != nil {
		return err
	}
	hosts := h.header["Host"]
	if len(hosts) != 1 || !httpguts.ValidHostHeader(hosts[0]) {
		return errMalformed
	}
	h.host = hosts[0]
	delete(h.header, "Host") // as net/http does: Host is its own field
	if _, ok := h.header["Transfer-Encoding"]; ok {
		return errFallback
	}
	for _, k := range []string{"Upgrade", "Expect"} {
		if _, ok := h.header[k]; ok {
			return errFallback
		}
	}
	return nil
}

// parseResponseHead parses a response head read by readHead.
func parseResponseHead(b []byte) (*head, error) {
	h := &head{}
	return h, h.parseResponse(b)
}

// parseResponse is parseRequest for a response head.
func (h *head) parseResponse(b []byte) error {
	h.reset()
	line, rest := nextLine(string(b))
	if len(line) < 12 || line[8] != ' ' {
		return errMalformed
	}
	switch line[:8] {
	case "HTTP/1.1":
		h.proto11 = true
	case "HTTP/1.0":
	default:
		return errMalformed
	}
	code, err := strconv.Atoi(line[9:12])
	if err != nil || code < 100 || code > 999 || (len(line) > 12 && line[12] != ' ') {
		return errMalformed
	}
	h.code = code
	if err := parseFields(rest, h, false); err != nil {
		return err
	}
	if te := h.header["Transfer-Encoding"]; len(te) > 0 {
		if len(te) != 1 || !httpguts.HeaderValuesContainsToken(te, "chunked") || te[0] != "chunked" {
			return errMalformed // only plain chunked is forwarded
		}
		h.chunked, h.contentLength = true, -1
	}
	return nil
}

// parseFields parses the header lines of s into h.header (empty, or nil).
func parseFields(s string, h *head, request bool) error {
	if h.header == nil {
		h.header = make(http.Header, 8)
	}
	h.contentLength = -1
	for len(s) > 0 {
		var line string
		line, s = nextLine(s)
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if request {
				return errFallback // obsolete line folding: net/http's call
			}
			return errMalformed
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return errMalformed
		}
		name := line[:colon]
		for i := 0; i < len(name); i++ {
			if !httpguts.IsTokenRune(rune(name[i])) {
				return errMalformed
			}
		}
		value := strings.Trim(line[colon+1:], " \t")
		if !httpguts.ValidHeaderFieldValue(value) {
			return errMalformed
		}
		key := http.CanonicalHeaderKey(name)
		h.header[key] = append(h.header[key], value)
	}
	if cl := h.header["Content-Length"]; len(cl) > 0 {
		for _, v := range cl[1:] {
			if v != cl[0] {
				return errMalformed
			}
		}
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 || cl[0][0] == '+' {
			return errMalformed
		}
		h.contentLength = n
		h.header["Content-Length"] = cl[:1]
	}
	conn := h.header["Connection"]
	h.closeConn = httpguts.HeaderValuesContainsToken(conn, "close") ||
		(!h.proto11 && !httpguts.HeaderValuesContainsToken(conn, "keep-alive"))
	return nil
}

// hopHeaders are removed when a message is forwarded (RFC 9110 7.6.1), with those the
// Connection header names.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for _, f := range bytes.Split([]byte(v), []byte(",")) {
			if f = bytes.TrimSpace(f); len(f) > 0 {
				delete(h, http.CanonicalHeaderKey(string(f)))
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}
