package hbone

import (
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// deadline is a resettable cancellation channel for one direction of a stream.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{}
	// onExpire, if set, runs (without locks) once the deadline passed: an asynchronous
	// WriteTo has no goroutine waiting on ch.
	onExpire func()
}

func newDeadline() deadline { return deadline{ch: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	if d.arm(t) && d.onExpire != nil {
		d.onExpire()
	}
}

// arm sets the deadline and reports whether that expired it at once.
func (d *deadline) arm(t time.Time) (expired bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.ch // the timer fired: wait until its close happened
	}
	d.timer = nil
	fired := isClosed(d.ch)
	if t.IsZero() {
		if fired {
			d.ch = make(chan struct{})
		}
		return false
	}
	dur := time.Until(t)
	if dur <= 0 {
		if !fired {
			close(d.ch)
		}
		return !fired
	}
	if fired {
		d.ch = make(chan struct{})
	}
	ch, onExpire := d.ch, d.onExpire
	d.timer = time.AfterFunc(dur, func() {
		close(ch)
		if onExpire != nil {
			onExpire()
		}
	})
	return false
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

func (d *deadline) expired() bool { return isClosed(d.wait()) }

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// maxGather bounds the receive chunks handed to a destination in one writev
// (a BuffersTryWriter takes no more in one call).
const maxGather = 16

// Receive buffers: size classes that start small and grow with the flow.
var bufClasses = [...]int{4 << 10, 32 << 10, 128 << 10}
var bufPools [len(bufClasses)]sync.Pool

func getBuf(n int) []byte {
	for i, sz := range bufClasses {
		if n <= sz || i == len(bufClasses)-1 {
			if b, ok := bufPools[i].Get().(*[]byte); ok {
				return (*b)[:0]
			}
			return make([]byte, 0, sz)
		}
	}
	panic("unreachable")
}

func putBuf(b []byte) {
	for i, sz := range bufClasses {
		if cap(b) == sz {
			b = b[:0]
			bufPools[i].Put(&b)
			return
		}
	}
}

// stream is one HTTP/2 stream carrying a CONNECT tunnel. It implements
// net.Conn plus CloseWrite/CloseRead; Conn and Stream embed it.
type stream struct {
	c  *conn
	id uint32

	mu         sync.Mutex
	chunks     [][]byte // received, unread data; the last chunk may be filling
	roff       int
	rlen       int
	filling    bool
	remoteEnd  bool  // END_STREAM or RST received (or we stopped caring)
	rErr       error // returned by Read once the buffer is drained
	rDone      chan struct{}
	rWake      chan struct{}
	recv       recvWindow
	readClosed bool
	writingOut bool          // WriteTo or the read loop is writing from chunks[0] without the lock
	sink       TryWriter     // WriteTo's destination while it runs, when it takes non-blocking writes
	parked     bool          // WriteTo waits for data: the read loop may deliver to sink itself
	delivered  int64         // bytes the read loop wrote to sink, for WriteTo's count
	deferred   bool          // in c.deferred, to be delivered before the read loop's next socket read
	async      *asyncWriteTo // WriteToAsync's, while it has no goroutine
	localEnd   bool          // END_STREAM or RST sent
	wErr       error         // write-side failure (reset, connection closed)
	closed     bool
	closedCh   chan struct{}
	removed    bool
	canSend    bool // client: got 200; server: accepted

	sendWindow int64 // guarded by c.mu
	wWake      chan struct{}
	wsem       chan struct{}
	wdone      chan error

	rdl, wdl deadline

	// client
	respCh   chan struct{}
	gotResp  bool
	status   int
	respErr  error
	early    bool        // DialEarly: sending before the answer; errors surface in Read/Write
	stopWait func() bool // early: stops the wait for the answer

	// server
	req         *ConnectRequest
	answered    bool
	holdAnswer  bool        // accepted, the 200 not yet queued (see Accept)
	answerTimer *time.Timer // sends a held 200 after answerHold
}

func newStream(c *conn, id uint32) *stream {
	s := &stream{
		c:          c,
		id:         id,
		rDone:      make(chan struct{}),
		rWake:      make(chan struct{}, 1),
		recv:       recvWindow{avail: streamWindow},
		closedCh:   make(chan struct{}),
		sendWindow: c.peerInitWindow,
		wWake:      make(chan struct{}, 1),
		wsem:       make(chan struct{}, 1),
		wdone:      make(chan error, 1),
		rdl:        newDeadline(),
		wdl:        newDeadline(),
	}
	s.rdl.onExpire = s.wakeReader
	return s
}

func (s *stream) wakeWriter() {
	select {
	case s.wWake <- struct{}{}:
	default:
	}
}

// wakeReader tells the stream's reader that something changed: it wakes a parked Read
// or WriteTo, or moves an asynchronous WriteTo on (see WriteToAsync).
func (s *stream) wakeReader() {
	s.mu.Lock()
	a := s.async
	if a == nil {
		s.mu.Unlock()
		select {
		case s.rWake <- struct{}{}:
		default:
		}
		return
	}
	var err error
	switch {
	case s.writingOut || s.deferred:
		// The read loop is delivering, or will before its next socket read; it calls
		// again when it stops.
		s.mu.Unlock()
		return
	case s.closed:
		err = net.ErrClosed
	case s.rdl.expired():
		err = os.ErrDeadlineExceeded
	case s.rlen > 0:
		// Data the destination did not take at once: WriteTo's loop waits for room.
		s.async = nil
		s.mu.Unlock()
		go func() { a.done(s.runWriteTo(a.w)) }()
		return
	case s.rErr != nil:
		if s.rErr != io.EOF {
			err = s.rErr
		}
	default:
		s.mu.Unlock() // nothing to do yet
		return
	}
	s.async = nil
	total := s.delivered
	s.sink, s.parked = nil, false
	s.mu.Unlock()
	a.done(total, err)
}

// setREndLocked ends the read direction with err (after buffered data).
func (s *stream) setREndLocked(err error) {
	s.remoteEnd = true
	if s.rErr == nil {
		s.rErr = err
		close(s.rDone)
	}
}

// ---- receive path (read loop) ----

// admit accounts length bytes of an arriving DATA frame. keep=false means
// discard it; code!=0 means reset the stream.
func (s *stream) admit(length int64) (keep bool, code http2.ErrCode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return false, 0
	case s.remoteEnd:
		return false, http2.ErrCodeStreamClosed
	case length > s.recv.avail:
		return false, http2.ErrCodeFlowControl
	}
	s.recv.avail -= length
	if s.readClosed {
		return false, 0
	}
	return true, 0
}

// fill reads n bytes from r into the receive buffer. The network read happens
// without the lock into the tail chunk's spare room, which readers leave alone
// while filling is set.
func (s *stream) fill(r io.Reader, n int64) error {
	for n > 0 {
		s.mu.Lock()
		if s.closed || s.readClosed {
			// Closed, or CloseRead, meanwhile: drop the rest (after CloseRead the
			// stream's window is returned too, so the peer never blocks on it).
			readClosed := !s.closed
			s.mu.Unlock()
			if err := s.c.discard(n); err != nil {
				return err
			}
			s.c.creditConn(n)
			if readClosed {
				s.creditStream(n)
			}
			return nil
		}
		var dst []byte
		if k := len(s.chunks); k > 0 {
			t := s.chunks[k-1]
			if cap(t) > len(t) {
				dst = t[len(t):cap(t)]
			}
		}
		if dst == nil {
			// Data piling up (deferred delivery, a slow reader) gets larger buffers:
			// fewer, larger writes out.
			b := getBuf(int(min(n, 1<<30)) + s.rlen)
			s.chunks = append(s.chunks, b)
			dst = b[:cap(b)]
		}
		if int64(len(dst)) > n {
			dst = dst[:n]
		}
		s.filling = true
		s.mu.Unlock()

		_, err := io.ReadFull(r, dst)

		s.mu.Lock()
		s.filling = false
		if s.closed || s.readClosed || len(s.chunks) == 0 {
			// The buffer was dropped while this read ran: so is what it read.
			readClosed := !s.closed
			s.mu.Unlock()
			s.c.creditConn(int64(len(dst)))
			if readClosed {
				s.creditStream(int64(len(dst)))
			}
		} else {
			k := len(s.chunks) - 1
			s.chunks[k] = s.chunks[k][:len(s.chunks[k])+len(dst)]
			s.rlen += len(dst)
			direct := s.sink != nil && s.parked && !s.writingOut
			queue := direct && !s.deferred
			if queue {
				s.deferred = true
			}
			s.mu.Unlock()
			switch {
			case queue:
				s.c.deferDelivery(s) // written out before the read loop waits
			case !direct:
				s.wakeReader()
			}
		}
		if err != nil {
			return err
		}
		n -= int64(len(dst))
	}
	return nil
}

// claimDeliveryLocked takes the writingOut role when buffered data can go to the
// parked WriteTo's destination from the caller now: nobody is writing it, and it is not
// left to the read loop's deferred flush.
func (s *stream) claimDeliveryLocked() bool {
	direct := s.sink != nil && s.parked && !s.writingOut && !s.deferred && !s.closed && s.rlen > 0
	if direct {
		s.writingOut = true
	}
	return direct
}

// deliverOrWake delivers after claimDeliveryLocked said direct, and otherwise tells
// the reader.
func (s *stream) deliverOrWake(direct bool) {
	if direct {
		s.deliver()
	} else {
		s.wakeReader()
	}
}

// deliver writes buffered data to the parked WriteTo's destination from the read loop,
// without blocking, and wakes WriteTo only for what the destination did not take. The
// caller has claimed writingOut.
func (s *stream) deliver() {
	for {
		s.mu.Lock()
		if s.closed || s.rlen == 0 || !s.parked {
			s.writingOut = false
			wake := !s.parked || s.async != nil
			s.mu.Unlock()
			if wake {
				s.wakeReader()
			}
			return
		}
		c0 := s.chunks[0]
		tw := s.sink
		var (
			n, want int
			err     error
		)
		if tv, ok := tw.(BuffersTryWriter); ok && len(s.chunks) > 1 {
			// Each chunk up to its filled length: the read loop may be filling the
			// last one's spare room meanwhile.
			var bufs [maxGather][]byte
			bv := append(bufs[:0], c0[s.roff:])
			for _, c := range s.chunks[1:min(len(s.chunks), maxGather)] {
				bv = append(bv, c)
			}
			for _, b := range bv {
				want += len(b)
			}
			s.mu.Unlock()
			n, err = tv.TryWriteBuffers(bv)
		} else {
			p := c0[s.roff:]
			want = len(p)
			s.mu.Unlock()
			n, err = tw.TryWrite(p)
		}

		s.mu.Lock()
		if len(s.chunks) > 0 && &s.chunks[0][:1][0] == &c0[:1][0] {
			s.consumeLocked(n)
		} else {
			n = 0 // dropped meanwhile (Close, CloseRead): already credited
		}
		s.delivered += int64(n)
		more := err == nil && n == want
		if !more {
			s.writingOut = false
		}
		s.mu.Unlock()
		if n > 0 {
			s.c.creditConn(int64(n))
			s.creditStream(int64(n))
		}
		if !more {
			s.wakeReader() // WriteTo writes the rest, or meets the error itself
			return
		}
	}
}

// creditStream returns consumed bytes to the peer's stream window.
func (s *stream) creditStream(n int64) {
	s.mu.Lock()
	if s.remoteEnd {
		s.mu.Unlock()
		return
	}
	inc := s.recv.credit(n, streamWindow)
	s.mu.Unlock()
	if inc > 0 {
		s.c.enqueue(wreq{kind: wWindowUpdate, streamID: s.id, val: uint32(inc)})
	}
}

func (s *stream) onRemoteEnd() {
	s.mu.Lock()
	s.setREndLocked(io.EOF)
	s.mu.Unlock()
	s.wakeReader()
	s.c.removeIfDone(s)
}

func (s *stream) onReset(code http2.ErrCode) {
	err := resetError{uint32(code)}
	s.mu.Lock()
	if !s.remoteEnd {
		s.setREndLocked(err)
	}
	if !s.localEnd {
		s.localEnd = true
		if s.wErr == nil {
			s.wErr = err
		}
	}
	if !s.gotResp && s.respCh != nil {
		s.gotResp = true
		if code == http2.ErrCodeRefusedStream {
			s.respErr = errRefused
		} else {
			s.respErr = err
		}
		close(s.respCh)
	}
	s.mu.Unlock()
	s.wakeReader()
	s.wakeWriter()
	s.c.removeIfDone(s)
}

// fail ends the stream locally with err (GOAWAY-refused streams).
func (s *stream) fail(err error) {
	s.mu.Lock()
	s.endLocked(err, err)
	s.mu.Unlock()
	s.wakeReader()
	s.wakeWriter()
	s.c.removeIfDone(s)
}

func (s *stream) connClosed(err error) {
	s.mu.Lock()
	s.endLocked(err, err)
	s.removed = true
	s.mu.Unlock()
	s.wakeReader()
	s.wakeWriter()
}

// endLocked ends both directions: readers and writers see err unless an
// earlier error is already recorded, and a client still waiting for the
// response gets respErr.
func (s *stream) endLocked(err, respErr error) {
	if !s.remoteEnd {
		s.setREndLocked(err)
	}
	s.localEnd = true
	if s.wErr == nil {
		s.wErr = err
	}
	if !s.gotResp && s.respCh != nil {
		s.gotResp = true
		s.respErr = respErr
		close(s.respCh)
	}
}

// resetLocal sends RST_STREAM(code) and ends both directions.
func (s *stream) resetLocal(code http2.ErrCode) {
	s.mu.Lock()
	send := !s.localEnd || !s.remoteEnd
	s.releaseAnswerLocked(true) // the client learns the tunnel was open, then why it ended
	err := resetError{uint32(code)}
	s.endLocked(err, err)
	if send {
		s.c.enqueue(wreq{kind: wRST, streamID: s.id, val: uint32(code)})
	}
	s.mu.Unlock()
	s.wakeReader()
	s.wakeWriter()
	s.c.removeIfDone(s)
}

func (s *stream) onResponseHeaders(f *http2.MetaHeadersFrame) {
	s.mu.Lock()
	if s.gotResp {
		s.mu.Unlock()
		// Trailers: only their END_STREAM matters.
		if f.StreamEnded() {
			s.onRemoteEnd()
		} else {
			s.resetLocal(http2.ErrCodeProtocol)
		}
		return
	}
	code, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || code < 100 || code > 999 {
		s.mu.Unlock()
		s.resetLocal(http2.ErrCodeProtocol)
		return
	}
	if code < 200 {
		s.mu.Unlock()
		return // informational
	}
	s.gotResp = true
	s.status = code
	s.canSend = code == http.StatusOK
	close(s.respCh)
	stop := s.stopWait
	s.stopWait = nil
	if s.early && code != http.StatusOK {
		// Read and Write report the refusal, as Dial would have.
		err := &StatusError{Code: code}
		if s.wErr == nil {
			s.wErr = err
		}
		if !s.remoteEnd {
			s.setREndLocked(err)
		} else if s.rErr == io.EOF {
			s.rErr = err
		}
	}
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	if f.StreamEnded() {
		s.onRemoteEnd()
	}
	if code != http.StatusOK {
		// A 200 changes nothing for a parked Read, WriteTo or Write (an early
		// stream could already send); waking them would only cost a goroutine
		// switch per connection.
		s.wakeReader()
		s.wakeWriter()
	}
}

// ---- net.Conn ----

// Read reads tunnelled bytes. It returns io.EOF after the peer's END_STREAM.
func (s *stream) Read(p []byte) (int, error) {
	for {
		if s.rdl.expired() {
			return 0, os.ErrDeadlineExceeded
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, net.ErrClosed
		}
		if s.rlen > 0 {
			n := s.copyOutLocked(p)
			s.mu.Unlock()
			if n > 0 {
				s.c.creditConn(int64(n))
				s.creditStream(int64(n))
			}
			return n, nil
		}
		if s.rErr != nil {
			err := s.rErr
			s.mu.Unlock()
			return 0, err
		}
		s.mu.Unlock()
		if len(p) == 0 {
			return 0, nil
		}
		select {
		case <-s.rWake:
		case <-s.rDone:
		case <-s.closedCh:
		case <-s.rdl.wait():
		}
	}
}

func (s *stream) copyOutLocked(p []byte) int {
	n := 0
	for n < len(p) && s.rlen > 0 {
		c0 := s.chunks[0]
		k := copy(p[n:], c0[s.roff:])
		n += k
		s.roff += k
		s.rlen -= k
		if s.roff < len(c0) {
			break
		}
		if len(s.chunks) == 1 && s.filling {
			break // the read loop is writing past len(c0)
		}
		putBuf(c0)
		copy(s.chunks, s.chunks[1:])
		s.chunks[len(s.chunks)-1] = nil
		s.chunks = s.chunks[:len(s.chunks)-1]
		s.roff = 0
	}
	return n
}

// WriteTo writes received data to w straight from the receive buffer (one
// copy less than Read into a caller's buffer) until the peer ends its side;
// io.Copy uses it. Received bytes are returned to the peer's windows once w
// took them. When w is a socket (see NonBlocking), the connection's read loop
// writes arriving data to it directly while WriteTo waits, so nothing else may
// write to w until WriteTo returns.
func (s *stream) WriteTo(w io.Writer) (total int64, err error) {
	s.mu.Lock()
	s.sink = NonBlocking(w)
	s.delivered = 0
	s.mu.Unlock()
	return s.runWriteTo(w)
}

type asyncWriteTo struct {
	w    io.Writer
	done func(int64, error)
}

// WriteToAsync does what WriteTo does, for the caller, and calls done once with WriteTo's
// results. When w is a socket it usually runs no goroutine at all: the connection's read
// loop writes arriving data to w itself, and at the peer's END_STREAM calls done; a
// goroutine running WriteTo's loop starts only when w cannot take data at once. A relay
// saves a goroutine start and a wake-up per connection this way. done may run in the
// read loop, or in whatever goroutine ended the stream (Close, a deadline): it must not
// block, and must not wait for anything this stream does.
func (s *stream) WriteToAsync(w io.Writer, done func(int64, error)) {
	tw := NonBlocking(w)
	if tw == nil {
		go func() { done(s.WriteTo(w)) }()
		return
	}
	s.mu.Lock()
	s.sink, s.delivered, s.parked = tw, 0, true
	s.async = &asyncWriteTo{w: w, done: done}
	// Data already here (a request's first bytes) is written out by the caller.
	direct := s.claimDeliveryLocked()
	s.mu.Unlock()
	s.deliverOrWake(direct) // not direct: the end may already be here
}

// runWriteTo is WriteTo's loop, once its destination is set.
func (s *stream) runWriteTo(w io.Writer) (total int64, err error) {
	defer func() {
		s.mu.Lock()
		s.sink, s.parked = nil, false
		total += s.delivered
		s.mu.Unlock()
	}()
	for {
		if s.rdl.expired() {
			return total, os.ErrDeadlineExceeded
		}
		s.mu.Lock()
		s.parked = false
		if s.closed {
			s.mu.Unlock()
			return total, net.ErrClosed
		}
		if s.writingOut {
			// The read loop is delivering to w; it wakes us when it stops.
			s.mu.Unlock()
			select {
			case <-s.rWake:
			case <-s.closedCh:
			case <-s.rdl.wait():
			}
			continue
		}
		if s.rlen > 0 {
			c0 := s.chunks[0]
			p := c0[s.roff:]
			s.writingOut = true
			s.mu.Unlock()
			n, werr := w.Write(p)
			s.mu.Lock()
			s.writingOut = false
			if len(s.chunks) > 0 && &s.chunks[0][:1][0] == &c0[:1][0] {
				s.consumeLocked(n)
				s.mu.Unlock()
				if n > 0 {
					s.c.creditConn(int64(n))
					s.creditStream(int64(n))
				}
			} else {
				s.mu.Unlock() // dropped meanwhile (Close, CloseRead): already credited
			}
			total += int64(n)
			if werr != nil {
				return total, werr
			}
			continue
		}
		if s.rErr != nil {
			err := s.rErr
			s.mu.Unlock()
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		s.parked = s.sink != nil
		s.mu.Unlock()
		select {
		case <-s.rWake:
		case <-s.rDone:
		case <-s.closedCh:
		case <-s.rdl.wait():
		}
	}
}

// consumeLocked drops n bytes from the head of the receive buffer, releasing the
// chunks they empty.
func (s *stream) consumeLocked(n int) {
	s.rlen -= n
	for {
		c0 := s.chunks[0]
		k := min(n, len(c0)-s.roff)
		s.roff += k
		n -= k
		if s.roff < len(c0) || (len(s.chunks) == 1 && s.filling) {
			return
		}
		putBuf(c0)
		copy(s.chunks, s.chunks[1:])
		s.chunks[len(s.chunks)-1] = nil
		s.chunks = s.chunks[:len(s.chunks)-1]
		s.roff = 0
		if n == 0 || len(s.chunks) == 0 {
			return
		}
	}
}

// dropBufferLocked discards unread data and returns how many bytes it was.
func (s *stream) dropBufferLocked() int {
	n := s.rlen
	for i, b := range s.chunks {
		if i == len(s.chunks)-1 && s.filling {
			break // still being written into; let the GC have it
		}
		if i == 0 && s.writingOut {
			continue // WriteTo is writing from it; let the GC have it
		}
		putBuf(b)
	}
	s.chunks = nil
	s.roff, s.rlen = 0, 0
	return n
}

func (s *stream) writeErrLocked() error {
	switch {
	case s.closed:
		return net.ErrClosed
	case s.wErr != nil:
		return s.wErr
	case s.localEnd:
		return errWriteClosed
	case !s.canSend:
		return errNotAccepted
	}
	return nil
}

// Write sends p, blocking on HTTP/2 flow control.
func (s *stream) Write(p []byte) (int, error) {
	if err := s.acquireWrite(); err != nil {
		return 0, err
	}
	defer s.releaseWrite()
	return s.writeAll(p)
}

// acquireWrite makes the caller the stream's only writer.
func (s *stream) acquireWrite() error {
	select {
	case s.wsem <- struct{}{}:
		return nil
	default:
	}
	select {
	case s.wsem <- struct{}{}:
		return nil
	case <-s.wdl.wait():
		return os.ErrDeadlineExceeded
	case <-s.closedCh:
		return net.ErrClosed
	}
}

func (s *stream) releaseWrite() { <-s.wsem }

// writeAll sends p (the caller is the stream's writer).
func (s *stream) writeAll(p []byte) (int, error) {
	n := 0
	for {
		if s.wdl.expired() {
			return n, os.ErrDeadlineExceeded
		}
		if len(p) == 0 {
			s.mu.Lock()
			err := s.writeErrLocked()
			s.mu.Unlock()
			if n > 0 {
				err = nil
			}
			return n, err
		}
		k, err := s.reserve(len(p), true)
		if err != nil {
			return n, err
		}
		if err := s.send(wreq{kind: wData, data: p[:k]}, k); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
}

// reserve takes up to want bytes of send window from the stream and the
// connection; with wait it waits until it can take at least one, otherwise it
// may return 0.
func (s *stream) reserve(want int, wait bool) (int, error) {
	c := s.c
	for {
		c.mu.Lock()
		s.mu.Lock()
		err := s.writeErrLocked()
		s.mu.Unlock()
		if err == nil && c.closed {
			err = c.err
		}
		if err != nil {
			c.mu.Unlock()
			return 0, err
		}
		n := min(int64(want), s.sendWindow, c.sendWindow, maxWriteChunk)
		if n > 0 {
			s.sendWindow -= n
			c.sendWindow -= n
			c.mu.Unlock()
			return int(n), nil
		}
		c.mu.Unlock()
		if !wait {
			return 0, nil
		}
		select {
		case <-s.wWake:
		case <-s.closedCh:
		case <-c.closedCh:
		case <-s.wdl.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
}

func (s *stream) unreserve(n int) {
	c := s.c
	c.mu.Lock()
	s.sendWindow += int64(n)
	c.sendWindow += int64(n)
	for _, o := range c.streams {
		o.wakeWriter()
	}
	c.mu.Unlock()
}

// send hands r, carrying n bytes of reserved window, to the connection writer
// and waits until it is copied out or written, so the caller may reuse its
// buffer as soon as send returns.
func (s *stream) send(r wreq, n int) error {
	s.mu.Lock()
	if err := s.writeErrLocked(); err != nil {
		s.mu.Unlock()
		s.unreserve(n)
		return err
	}
	r.s, r.streamID = s, s.id
	if s.holdAnswer {
		// The held 200 rides in the same request: no writer can take one without the other.
		s.holdAnswer = false
		s.answerTimer.Stop()
		r.hdrs = status200
	}
	ok, inline := s.c.pushData(r)
	s.mu.Unlock()
	if !ok {
		return s.c.closeErr()
	}
	if inline {
		if s.c.open.Load() > 1 {
			// Other streams of the connection may be about to write (a waypoint's
			// concurrent requests, a node pair's many connections): let the goroutines
			// that are ready run first, so their frames join this system call. The
			// kernel's cost per write (the veth and the receiver's TCP, paid here) is
			// most of a small request's, and it is not paid twice; with nothing else
			// ready the yield returns at once.
			runtime.Gosched()
		}
		return s.c.drain(true)
	}
	select {
	case err := <-s.wdone:
		return err
	case <-s.wdl.wait():
		if s.c.cancelData(s) {
			s.unreserve(n)
			return os.ErrDeadlineExceeded
		}
		return <-s.wdone
	}
}

// CloseWrite sends END_STREAM: the peer reads EOF, this side can still read.
func (s *stream) CloseWrite() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	if !s.canSend {
		s.mu.Unlock()
		return errNotAccepted
	}
	if s.localEnd {
		s.mu.Unlock()
		return nil
	}
	s.releaseAnswerLocked(false)
	s.localEnd = true
	s.c.push(wreq{kind: wData, streamID: s.id, end: true})
	s.mu.Unlock()
	s.c.writeNow() // the caller sends END_STREAM itself: no hand-off
	s.wakeWriter()
	s.c.removeIfDone(s)
	return nil
}

// CloseRead discards further received data; Read returns io.EOF. The peer is
// not told (HTTP/2 has no read-side shutdown); its data is acknowledged and
// dropped so it never blocks on flow control.
func (s *stream) CloseRead() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.readClosed = true
	n := s.dropBufferLocked()
	if s.rErr == nil {
		s.rErr = io.EOF
		close(s.rDone)
	}
	s.mu.Unlock()
	if n > 0 {
		s.c.creditConn(int64(n))
		s.creditStream(int64(n))
	}
	s.wakeReader()
	return nil
}

// Close ends the stream like closing a TCP socket: data already written is
// delivered followed by END_STREAM; if the peer has not finished sending, the
// stream is then reset with CANCEL. Once both sides finished it sends nothing.
func (s *stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closedCh)
	s.releaseAnswerLocked(true)
	if !s.localEnd {
		s.localEnd = true
		if s.canSend {
			s.c.enqueue(wreq{kind: wData, streamID: s.id, end: true})
		}
		if !s.remoteEnd || !s.canSend {
			s.c.enqueue(wreq{kind: wRST, streamID: s.id, val: uint32(http2.ErrCodeCancel)})
		}
	} else if !s.remoteEnd {
		s.c.enqueue(wreq{kind: wRST, streamID: s.id, val: uint32(http2.ErrCodeCancel)})
	}
	if !s.remoteEnd {
		s.setREndLocked(net.ErrClosed)
	}
	n := s.dropBufferLocked()
	s.mu.Unlock()
	if n > 0 {
		s.c.creditConn(int64(n))
	}
	s.wakeReader()
	s.wakeWriter()
	s.c.removeIfDone(s)
	return nil
}

// LocalAddr is the local address of the underlying TCP connection.
func (s *stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr is the remote address of the underlying TCP connection.
func (s *stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

func (s *stream) SetDeadline(t time.Time) error {
	s.rdl.set(t)
	s.wdl.set(t)
	return nil
}

func (s *stream) SetReadDeadline(t time.Time) error  { s.rdl.set(t); return nil }
func (s *stream) SetWriteDeadline(t time.Time) error { s.wdl.set(t); return nil }

// releaseAnswerLocked queues a held 200 ahead of the frame the caller queues next,
// waking the writer goroutine when wake (c.enqueue) or not (c.push). Caller holds s.mu.
func (s *stream) releaseAnswerLocked(wake bool) {
	if !s.holdAnswer {
		return
	}
	s.holdAnswer = false
	s.answerTimer.Stop()
	if s.localEnd { // reset, or the connection ended: nothing more goes out
		return
	}
	r := wreq{kind: wHeaders, streamID: s.id, hdrs: status200}
	if wake {
		s.c.enqueue(r)
	} else {
		s.c.push(r)
	}
}

// answerHeld sends a held 200 that no frame took along within answerHold.
func (s *stream) answerHeld() {
	s.mu.Lock()
	s.releaseAnswerLocked(true)
	s.mu.Unlock()
}

// sendHeaders queues a HEADERS frame on the stream (caller holds s.mu).
func (s *stream) sendHeadersLocked(hdrs []hpack.HeaderField, end bool) bool {
	return s.c.enqueue(wreq{kind: wHeaders, streamID: s.id, hdrs: hdrs, end: end})
}

// pushHeadersLocked queues a HEADERS frame without waking the writer (caller
// holds s.mu and calls c.writeNow after releasing it).
func (s *stream) pushHeadersLocked(hdrs []hpack.HeaderField, end bool) bool {
	return s.c.push(wreq{kind: wHeaders, streamID: s.id, hdrs: hdrs, end: end})
}

func errEOF() error { return io.EOF }
