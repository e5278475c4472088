package waypoint

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"strconv"

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

// head is a parsed message head; its strings are copies.
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

// nextLine splits b at its first line, CRLF or LF removed.
func nextLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// parseRequestHead parses a request head read by readHead.
func parseRequestHead(b []byte) (*head, error) {
	line, rest := nextLine(b)
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return nil, errMalformed
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return nil, errMalformed
	}
	sp2 += sp1 + 1
	method, target, proto := line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	for _, c := range method {
		if !httpguts.IsTokenRune(rune(c)) {
			return nil, errMalformed
		}
	}
	if len(target) == 0 {
		return nil, errMalformed
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return nil, errMalformed
		}
	}
	switch string(proto) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		return nil, errFallback
	default:
		return nil, errMalformed
	}
	if target[0] != '/' {
		return nil, errFallback // absolute form, "*", garbage: the std path decides
	}
	h := &head{method: string(method), target: string(target), proto11: true}
	if err := parseFields(rest, h, true); err != nil {
		return nil, err
	}
	hosts := h.header["Host"]
	if len(hosts) != 1 || !httpguts.ValidHostHeader(hosts[0]) {
		return nil, errMalformed
	}
	h.host = hosts[0]
	delete(h.header, "Host") // as net/http does: Host is its own field
	if _, ok := h.header["Transfer-Encoding"]; ok {
		return nil, errFallback
	}
	for _, k := range []string{"Upgrade", "Expect"} {
		if _, ok := h.header[k]; ok {
			return nil, errFallback
		}
	}
	return h, nil
}

// parseResponseHead parses a response head read by readHead.
func parseResponseHead(b []byte) (*head, error) {
	line, rest := nextLine(b)
	if len(line) < 12 || line[8] != ' ' {
		return nil, errMalformed
	}
	h := &head{}
	switch string(line[:8]) {
	case "HTTP/1.1":
		h.proto11 = true
	case "HTTP/1.0":
	default:
		return nil, errMalformed
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil || code < 100 || code > 999 || (len(line) > 12 && line[12] != ' ') {
		return nil, errMalformed
	}
	h.code = code
	if err := parseFields(rest, h, false); err != nil {
		return nil, err
	}
	if te := h.header["Transfer-Encoding"]; len(te) > 0 {
		if len(te) != 1 || !httpguts.HeaderValuesContainsToken(te, "chunked") || te[0] != "chunked" {
			return nil, errMalformed // only plain chunked is forwarded
		}
		h.chunked, h.contentLength = true, -1
	}
	return h, nil
}

// parseFields parses the header lines of b into h.
func parseFields(b []byte, h *head, request bool) error {
	h.header = make(http.Header, 8)
	h.contentLength = -1
	for len(b) > 0 {
		var line []byte
		line, b = nextLine(b)
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if request {
				return errFallback // obsolete line folding: net/http's call
			}
			return errMalformed
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return errMalformed
		}
		name := line[:colon]
		for _, c := range name {
			if !httpguts.IsTokenRune(rune(c)) {
				return errMalformed
			}
		}
		value := bytes.Trim(line[colon+1:], " \t")
		if !httpguts.ValidHeaderFieldValue(string(value)) {
			return errMalformed
		}
		key := http.CanonicalHeaderKey(string(name))
		h.header[key] = append(h.header[key], string(value))
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
