package hbone

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Flow-control and framing parameters we advertise (see docs/hbone.md).
const (
	streamWindow = 8 << 20  // SETTINGS_INITIAL_WINDOW_SIZE
	connWindow   = 32 << 20 // connection window, raised with WINDOW_UPDATE on stream 0
	// creditDivisor: consumed bytes are returned once a quarter of a window has been
	// consumed, so a bulk sender keeps three quarters of its window in hand while
	// the WINDOW_UPDATE travels (returning at half measurably stalled single streams).
	creditDivisor    = 4
	maxFrameSize     = 256 << 10
	maxHeaderList    = 64 << 10
	serverMaxStreams = 1000
	maxWriteChunk    = 256 << 10 // flow-control grant per writer hand-off
	defaultWindow    = 65535
	maxWindow        = 1<<31 - 1
	prefaceTimeout   = 10 * time.Second
)

type wkind uint8

const (
	wRaw wkind = iota
	wData
	wHeaders
	wWindowUpdate
	wRST
	wPing
	wSettings
	wSettingsAck
	wGoAway
	wClose // flush what is queued, then close the connection
	wSlots // data laid out in record slots (val bytes of payload), sealed in place
)

// wreq is one entry of a connection's FIFO write queue. FIFO order matters:
// END_STREAM and RST_STREAM must follow the DATA queued before them.
type wreq struct {
	kind     wkind
	end      bool // END_STREAM / PING ack / header table size present
	notify   bool // data: signal s.wdone once copied out
	streamID uint32
	val      uint32
	s        *stream
	data     []byte
	hdrs     []hpack.HeaderField // HEADERS; on data, a HEADERS frame written just before it
	ping     [8]byte
	settings []http2.Setting
}

// connError is a connection-level protocol error: GOAWAY with code, then close.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return fmt.Sprintf("hbone: protocol error %v: %s", e.code, e.reason)
}

type connOptions struct {
	client       bool
	idleTimeout  time.Duration
	pingInterval time.Duration // <= 0 disables
	pingTimeout  time.Duration
	log          *slog.Logger
	peer         spiffeid.ID
	peerCerts    []*x509.Certificate
	onState      func(*conn)                                // streams changed or connection closed
	onHeaders    func(*conn, *http2.MetaHeadersFrame) error // server: new request
	localStreams uint32                                     // server: our MAX_CONCURRENT_STREAMS
}

// conn is one HTTP/2 connection, either side.
type conn struct {
	connOptions
	rl recordLayer // the TLS records over nc
	nc net.Conn

	fr *http2.Framer // read side, owned by the read loop

	// Owned by the write loop.
	wfr    *http2.Framer
	henc   *hpack.Encoder
	hbuf   bytes.Buffer
	hdrBuf [9]byte

	wqMu    sync.Mutex
	wqCond  sync.Cond
	wq      []wreq
	wStop   bool
	wDone   bool
	writing bool // guarded by wqMu: someone holds the writing role

	// Owned by the writing role.
	batch []wreq
	werr  error // sticky write error
	dirty bool  // written since the last flush
	wrote bool  // inline writer: its batch is written

	peerMaxFrame atomic.Uint32
	open         atomic.Int32 // len(streams), for writers that do not hold mu
	lastRecv     atomic.Int64

	mu             sync.Mutex
	streams        map[uint32]*stream
	nextID         uint32 // client: next stream id
	maxPeerID      uint32 // server: highest client stream id seen
	reserved       int    // client: slots promised to dialers
	peerMaxStreams uint32
	peerInitWindow int64
	sendWindow     int64
	recv           recvWindow
	goAwaySent     bool
	goAwayRecv     bool
	idleSince      time.Time
	timerAt        time.Time // when timerLoop wakes next
	pingOut        bool
	pingData       [8]byte
	pingSent       time.Time
	closed         bool
	err            error
	pendingErr     error
	gotSettings    bool

	// Owned by the read loop: streams whose received data waits to be written to their
	// parked WriteTo's destination (see stream.fill).
	deferred []*stream

	settingsCh chan struct{}
	closedCh   chan struct{}
	kick       chan struct{}
	writerDone chan struct{}
	timerDone  chan struct{}
	handlers   sync.WaitGroup
}

func newConn(rl recordLayer, o connOptions) *conn {
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	c := &conn{
		connOptions:    o,
		rl:             rl,
		nc:             rl.netConn(),
		streams:        make(map[uint32]*stream),
		peerMaxStreams: 100,
		peerInitWindow: defaultWindow,
		sendWindow:     defaultWindow,
		recv:           recvWindow{avail: connWindow},
		idleSince:      time.Now(),
		settingsCh:     make(chan struct{}),
		closedCh:       make(chan struct{}),
		kick:           make(chan struct{}, 1),
		writerDone:     make(chan struct{}),
		timerDone:      make(chan struct{}),
	}
	if o.client {
		c.nextID = 1
	}
	c.wqCond.L = &c.wqMu
	c.peerMaxFrame.Store(16384)
	c.lastRecv.Store(time.Now().UnixNano())
	c.fr = http2.NewFramer(nil, rl)
	c.fr.SetMaxReadFrameSize(maxFrameSize)
	c.fr.MaxHeaderListSize = maxHeaderList
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.wfr = http2.NewFramer(rl, nil)
	// A KeyUpdate answer waits in the record layer for the writer's next flush.
	rl.hook(func() { c.enqueue(wreq{kind: wRaw}) }, c.flushDeferred)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start queues the preface and settings and starts the writer and timer
// goroutines. The caller runs readLoop.
func (c *conn) start() {
	if c.client {
		c.enqueue(wreq{kind: wRaw, data: []byte(http2.ClientPreface)})
		c.enqueue(wreq{kind: wSettings, settings: []http2.Setting{
			{ID: http2.SettingEnablePush, Val: 0},
			{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
			{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
		}})
	} else {
		c.enqueue(wreq{kind: wSettings, settings: []http2.Setting{
			{ID: http2.SettingMaxConcurrentStreams, Val: c.localStreams},
			{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
			{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
		}})
	}
	c.enqueue(wreq{kind: wWindowUpdate, streamID: 0, val: connWindow - defaultWindow})
	go c.writeLoop()
	go c.timerLoop()
}

// run serves the connection until it closes and all its goroutines are done.
func (c *conn) run() {
	c.readLoop()
	<-c.closedCh
	<-c.writerDone
	<-c.timerDone
	c.handlers.Wait()
}

// ---- write side ----
//
// Frames go through one FIFO queue. Whoever holds the writing role drains it:
// either the connection's writer goroutine or, to save two goroutine hand-offs
// per write, a goroutine that wants its own frames out now (a stream's Write,
// the client's HEADERS, the server's 200) and finds nobody writing. Goroutines
// that must never block on the socket (the read loop, Close) only queue and wake
// the writer goroutine.

// enqueue queues r and wakes the writer goroutine unless someone is writing.
func (c *conn) enqueue(r wreq) bool {
	c.wqMu.Lock()
	if c.wStop || c.wDone {
		c.wqMu.Unlock()
		return false
	}
	c.wq = append(c.wq, r)
	if !c.writing {
		c.wqCond.Signal()
	}
	c.wqMu.Unlock()
	return true
}

// push queues r without waking anyone; the caller then calls writeNow once it
// holds no lock the read loop needs.
func (c *conn) push(r wreq) bool {
	c.wqMu.Lock()
	defer c.wqMu.Unlock()
	if c.wStop || c.wDone {
		return false
	}
	c.wq = append(c.wq, r)
	return true
}

// writeNow writes what is queued in this goroutine unless someone else is
// writing (who then writes it).
func (c *conn) writeNow() {
	c.wqMu.Lock()
	if c.writing || len(c.wq) == 0 || c.wStop || c.wDone {
		c.wqMu.Unlock()
		return
	}
	c.writing = true
	c.wqMu.Unlock()
	c.drain(true)
}

// pushData queues a stream's data. inline reports that the caller got the
// writing role and must call drain(true); otherwise it waits on s.wdone.
func (c *conn) pushData(r wreq) (ok, inline bool) {
	c.wqMu.Lock()
	defer c.wqMu.Unlock()
	if c.wStop || c.wDone {
		return false, false
	}
	if c.writing {
		r.notify = true
		c.wq = append(c.wq, r)
		return true, false
	}
	r.notify = false
	c.wq = append(c.wq, r)
	c.writing = true
	return true, true
}

// cancelData removes s's pending data request if the writer has not taken it.
func (c *conn) cancelData(s *stream) bool {
	c.wqMu.Lock()
	defer c.wqMu.Unlock()
	for i := range c.wq {
		if (c.wq[i].kind == wData || c.wq[i].kind == wSlots) && c.wq[i].notify && c.wq[i].s == s {
			if c.wq[i].hdrs != nil {
				// The answer it carried still goes out.
				c.wq[i] = wreq{kind: wHeaders, streamID: c.wq[i].streamID, hdrs: c.wq[i].hdrs}
				return true
			}
			copy(c.wq[i:], c.wq[i+1:])
			c.wq[len(c.wq)-1] = wreq{}
			c.wq = c.wq[:len(c.wq)-1]
			return true
		}
	}
	return false
}

var errGraceful = errors.New("graceful close")

func (c *conn) writeLoop() {
	defer close(c.writerDone)
	for {
		c.wqMu.Lock()
		for (len(c.wq) == 0 || c.writing) && !c.wStop {
			c.wqCond.Wait()
		}
		if c.wStop {
			if c.writing {
				// An inline writer holds the queue; it fails the rest.
				c.wqMu.Unlock()
				return
			}
			c.failQueueLocked()
			return
		}
		c.writing = true
		c.wqMu.Unlock()
		c.drain(false)
	}
}

// failQueueLocked (wqMu held, nobody writing) ends the queue after the
// connection closed: waiting writers get the connection's error.
func (c *conn) failQueueLocked() {
	rest := c.wq
	c.wq = nil
	c.wDone = true
	c.wqMu.Unlock()
	err := c.closeErr()
	for i := range rest {
		if rest[i].notify {
			rest[i].s.wdone <- err
		}
	}
}

// drain writes the queue while holding the writing role and releases it. The
// writer goroutine drains until the queue is empty; an inline writer writes one
// batch (its own frames are in it) and leaves the rest to the writer goroutine
// so a busy connection cannot hold its Write forever. Everything written is
// flushed when the queue is found empty. It returns the connection's sticky
// write error.
func (c *conn) drain(inline bool) error {
	c.wrote = false
	for {
		c.wqMu.Lock()
		if c.wStop {
			c.writing = false
			c.failQueueLocked()
			return c.closeErr()
		}
		if len(c.wq) == 0 {
			if c.dirty && c.werr == nil {
				c.wqMu.Unlock()
				c.dirty = false
				if err := c.rl.Flush(); err != nil {
					c.werr = err
					c.closeWith(fmt.Errorf("hbone: write: %w", err))
				}
				continue // frames queued meanwhile were not signalled
			}
			c.writing = false
			err := c.werr
			c.wqMu.Unlock()
			return err
		}
		if inline && c.wrote {
			// Our batch is out; hand the rest to the writer goroutine.
			c.wrote = false
			c.writing = false
			c.wqCond.Signal()
			err := c.werr
			c.wqMu.Unlock()
			return err
		}
		batch := c.wq
		c.wq = c.batch[:0]
		c.wqMu.Unlock()
		c.writeBatch(batch)
		c.batch = batch[:0]
		c.wrote = inline
	}
}

// writeBatch writes a batch of queued requests into the corked TLS connection
// (writing role held).
func (c *conn) writeBatch(batch []wreq) {
	if c.werr == nil {
		c.dirty = true
	}
	for i := range batch {
		r := &batch[i]
		if c.werr == nil {
			c.werr = c.writeOne(r)
			if c.werr != nil {
				if c.werr == errGraceful {
					c.closeWith(c.takePendingErr())
				} else {
					c.closeWith(fmt.Errorf("hbone: write: %w", c.werr))
				}
			}
		}
		if r.notify {
			r.s.wdone <- c.werr
		}
		*r = wreq{}
	}
}

func (c *conn) writeOne(r *wreq) error {
	switch r.kind {
	case wRaw:
		_, err := c.rl.Write(r.data)
		return err
	case wData:
		if r.hdrs != nil {
			if err := c.writeHeaders(r.streamID, r.hdrs, false); err != nil {
				return err
			}
		}
		return c.writeData(r.streamID, r.data, r.end)
	case wSlots:
		if r.hdrs != nil {
			if err := c.writeHeaders(r.streamID, r.hdrs, false); err != nil {
				return err
			}
		}
		for i, n := 0, int(r.val); n > 0; i++ {
			p := min(n, slotPayload)
			n -= p
			putDataHeader(r.data[i*slotLen+recordHeaderLen:], p, r.streamID, false)
		}
		return c.rl.writeSlots(r.data, int(r.val))
	case wHeaders:
		return c.writeHeaders(r.streamID, r.hdrs, r.end)
	case wWindowUpdate:
		return c.wfr.WriteWindowUpdate(r.streamID, r.val)
	case wRST:
		return c.wfr.WriteRSTStream(r.streamID, http2.ErrCode(r.val))
	case wPing:
		return c.wfr.WritePing(r.end, r.ping)
	case wSettings:
		return c.wfr.WriteSettings(r.settings...)
	case wSettingsAck:
		if r.end {
			c.henc.SetMaxDynamicTableSizeLimit(r.val)
		}
		return c.wfr.WriteSettingsAck()
	case wGoAway:
		return c.wfr.WriteGoAway(r.streamID, http2.ErrCode(r.val), nil)
	case wClose:
		if err := c.rl.CloseNotify(); err != nil {
			return err
		}
		return errGraceful
	}
	return nil
}

// writeHeaders writes a HEADERS frame, with CONTINUATIONs if the block needs them.
func (c *conn) writeHeaders(id uint32, hdrs []hpack.HeaderField, end bool) error {
	c.hbuf.Reset()
	for _, hf := range hdrs {
		if err := c.henc.WriteField(hf); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	max := int(c.peerMaxFrame.Load())
	n := min(len(block), max)
	if err := c.wfr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: block[:n], EndStream: end, EndHeaders: n == len(block),
	}); err != nil {
		return err
	}
	for block = block[n:]; len(block) > 0; block = block[n:] {
		n = min(len(block), max)
		if err := c.wfr.WriteContinuation(id, n == len(block), block[:n]); err != nil {
			return err
		}
	}
	return nil
}

// writeData frames data itself (not via Framer.WriteData) so the payload is
// not copied into an intermediate frame buffer.
func (c *conn) writeData(id uint32, data []byte, end bool) error {
	max := int(c.peerMaxFrame.Load())
	for {
		n := min(len(data), max)
		last := n == len(data)
		h := c.hdrBuf[:]
		putDataHeader(h, n, id, last && end)
		if _, err := c.rl.Write(h); err != nil {
			return err
		}
		if _, err := c.rl.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
		if last {
			return nil
		}
	}
}

// putDataHeader writes the 9-byte header of a DATA frame of n bytes into h.
func putDataHeader(h []byte, n int, id uint32, end bool) {
	h[0], h[1], h[2] = byte(n>>16), byte(n>>8), byte(n)
	h[3], h[4] = byte(http2.FrameData), 0
	if end {
		h[4] = byte(http2.FlagDataEndStream)
	}
	binary.BigEndian.PutUint32(h[5:], id&0x7fffffff)
}

// ---- lifecycle ----

func (c *conn) closeErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return errConnClosed
}

func (c *conn) takePendingErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pendingErr != nil {
		return c.pendingErr
	}
	return errConnClosed
}

// closeWith closes the connection now and fails every stream with err.
func (c *conn) closeWith(err error) {
	if err == nil {
		err = errConnClosed
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.err = err
	streams := make([]*stream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	clear(c.streams)
	c.open.Store(0)
	c.mu.Unlock()
	close(c.closedCh)
	c.wqMu.Lock()
	c.wStop = true
	c.wqCond.Broadcast()
	c.wqMu.Unlock()
	c.nc.Close()
	for _, s := range streams {
		s.connClosed(err)
	}
	if c.onState != nil {
		c.onState(c)
	}
}

// gracefulClose flushes what is queued (GOAWAY) and then closes. A peer that
// stopped reading cannot hold us: the close is forced after a second.
func (c *conn) gracefulClose(err error) {
	c.mu.Lock()
	if c.pendingErr == nil {
		c.pendingErr = err
	}
	c.mu.Unlock()
	if !c.enqueue(wreq{kind: wClose}) {
		c.closeWith(err)
		return
	}
	t := time.AfterFunc(time.Second, func() { c.closeWith(err) })
	go func() {
		<-c.closedCh
		t.Stop()
	}()
}

// goAway sends GOAWAY(NO_ERROR): no new streams, active ones finish. The
// connection closes once the last stream is done.
func (c *conn) goAway() {
	c.mu.Lock()
	if c.closed || c.goAwaySent {
		c.mu.Unlock()
		return
	}
	c.goAwaySent = true
	last := c.maxPeerID
	idle := len(c.streams) == 0 && c.reserved == 0
	c.enqueue(wreq{kind: wGoAway, streamID: last, val: uint32(http2.ErrCodeNo)})
	c.mu.Unlock()
	if idle {
		c.gracefulClose(errGoAway)
	}
	c.notify()
}

func (c *conn) abort(code http2.ErrCode, reason string) {
	err := connError{code, reason}
	c.log.Debug("hbone connection error", "code", code.String(), "reason", reason)
	c.mu.Lock()
	last := c.maxPeerID
	c.goAwaySent = true
	c.mu.Unlock()
	c.enqueue(wreq{kind: wGoAway, streamID: last, val: uint32(code)})
	c.gracefulClose(err)
}

func (c *conn) notify() {
	if c.onState != nil {
		c.onState(c)
	}
}

func (c *conn) isClosed() bool {
	select {
	case <-c.closedCh:
		return true
	default:
		return false
	}
}

// ---- read side ----

func (c *conn) readLoop() {
	err := c.readFrames()
	var ce connError
	if errors.As(err, &ce) {
		c.abort(ce.code, ce.reason)
		return
	}
	c.closeWith(err)
}

func (c *conn) frameErr(err error) error {
	if errors.Is(err, http2.ErrFrameTooLarge) {
		return connError{http2.ErrCodeFrameSize, "frame too large"}
	}
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		reason := "malformed frame"
		if d := c.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return connError{http2.ErrCode(ce), reason}
	}
	if errors.Is(err, io.EOF) {
		return errConnClosed
	}
	return fmt.Errorf("hbone: read: %w", err)
}

func (c *conn) readFrames() error {
	if !c.client {
		c.nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
		var buf [len(http2.ClientPreface)]byte
		if _, err := io.ReadFull(c.rl, buf[:]); err != nil {
			return fmt.Errorf("hbone: read preface: %w", err)
		}
		if string(buf[:]) != http2.ClientPreface {
			return connError{http2.ErrCodeProtocol, "bad connection preface"}
		}
	}
	first := true
	for {
		fh, err := c.fr.ReadFrameHeader()
		if err != nil {
			return c.frameErr(err)
		}
		c.lastRecv.Store(time.Now().UnixNano())
		if first {
			if fh.Type != http2.FrameSettings || fh.Flags.Has(http2.FlagSettingsAck) {
				return connError{http2.ErrCodeProtocol, "first frame is not SETTINGS"}
			}
			first = false
			if !c.client {
				c.nc.SetReadDeadline(time.Time{})
			}
		}
		switch {
		case fh.Type == http2.FrameData:
			if err := c.readData(fh); err != nil {
				return err
			}
			continue
		case fh.Type > http2.FrameContinuation:
			// Unknown extension frames are ignored (RFC 9113 section 5.5).
			if err := c.discard(int64(fh.Length)); err != nil {
				return err
			}
			continue
		}
		f, err := c.fr.ReadFrameForHeader(fh)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.streamError(se.StreamID, se.Code)
				continue
			}
			return c.frameErr(err)
		}
		if err := c.handleFrame(f); err != nil {
			return err
		}
	}
}

// Data that arrives for a stream whose WriteTo waits on a socket is not written out
// frame by frame: the read loop first takes in every record it already holds, then
// writes each stream's data with one writev of all its receive chunks, before its next
// socket read (which may wait). A sender's 16 KiB frames would otherwise cost a
// syscall, and a pass through the receiving TCP stack, each.

// deferDelivery queues s, which the caller marked deferred, for flushDeferred (read loop
// only).
func (c *conn) deferDelivery(s *stream) {
	c.deferred = append(c.deferred, s)
}

// flushDeferred writes out what the deferred streams received (read loop only).
func (c *conn) flushDeferred() {
	for i, s := range c.deferred {
		c.deferred[i] = nil
		s.mu.Lock()
		s.deferred = false
		direct := s.claimDeliveryLocked()
		s.mu.Unlock()
		s.deliverOrWake(direct) // not direct: WriteTo stopped waiting meanwhile and writes it
	}
	c.deferred = c.deferred[:0]
}

var discardBuf = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

func (c *conn) discard(n int64) error {
	if n == 0 {
		return nil
	}
	bp := discardBuf.Get().(*[]byte)
	defer discardBuf.Put(bp)
	for n > 0 {
		k := min(n, int64(len(*bp)))
		if _, err := io.ReadFull(c.rl, (*bp)[:k]); err != nil {
			return c.frameErr(err)
		}
		n -= k
	}
	return nil
}

// streamError resets one stream after a stream-level protocol error.
func (c *conn) streamError(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	s := c.streams[id]
	if !c.client && id%2 == 1 && id > c.maxPeerID {
		c.maxPeerID = id
	}
	c.mu.Unlock()
	if s != nil {
		s.resetLocal(code)
		return
	}
	c.enqueue(wreq{kind: wRST, streamID: id, val: uint32(code)})
}

func (c *conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.MetaHeadersFrame:
		if c.client {
			return c.clientHeaders(f)
		}
		return c.onHeaders(c, f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			if c.pingOut && f.Data == c.pingData {
				c.pingOut = false
			}
			c.mu.Unlock()
			return nil
		}
		c.enqueue(wreq{kind: wPing, end: true, ping: f.Data})
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		s := c.streams[f.StreamID]
		idle := c.isIdleStreamLocked(f.StreamID)
		c.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "RST_STREAM on idle stream"}
		}
		if s != nil {
			s.onReset(f.ErrCode)
		}
	case *http2.GoAwayFrame:
		c.handleGoAway(f)
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE not enabled"}
	}
	return nil
}

func (c *conn) isIdleStreamLocked(id uint32) bool {
	if c.client {
		return id%2 == 1 && id >= c.nextID
	}
	return id%2 == 1 && id > c.maxPeerID
}

func (c *conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	var table uint32
	var hasTable bool
	c.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(min(s.Val, maxFrameSize))
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingHeaderTableSize:
			table, hasTable = s.Val, true
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWindow
			c.peerInitWindow = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				st.wakeWriter()
			}
		}
		return nil
	})
	first := !c.gotSettings
	c.gotSettings = true
	c.mu.Unlock()
	if err != nil {
		return c.frameErr(err)
	}
	c.enqueue(wreq{kind: wSettingsAck, end: hasTable, val: table})
	if first {
		close(c.settingsCh)
	}
	c.notify()
	return nil
}

func (c *conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.sendWindow += inc
		if c.sendWindow > maxWindow {
			return connError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		for _, s := range c.streams {
			s.wakeWriter()
		}
		return nil
	}
	if c.isIdleStreamLocked(f.StreamID) {
		return connError{http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream"}
	}
	s := c.streams[f.StreamID]
	if s == nil {
		return nil
	}
	s.sendWindow += inc
	if s.sendWindow > maxWindow {
		go s.resetLocal(http2.ErrCodeFlowControl)
		return nil
	}
	s.wakeWriter()
	return nil
}

func (c *conn) handleGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	var refused []*stream
	if c.client {
		for id, s := range c.streams {
			if id > f.LastStreamID {
				refused = append(refused, s)
			}
		}
	}
	c.mu.Unlock()
	if f.ErrCode != http2.ErrCodeNo {
		c.log.Debug("hbone goaway received", "code", f.ErrCode.String(), "debug", string(f.DebugData()))
	}
	for _, s := range refused {
		s.fail(errRefused)
	}
	c.mu.Lock()
	idle := len(c.streams) == 0
	c.mu.Unlock()
	if idle {
		c.gracefulClose(errGoAway)
	}
	c.notify()
}

func (c *conn) clientHeaders(f *http2.MetaHeadersFrame) error {
	c.mu.Lock()
	s := c.streams[f.StreamID]
	idle := c.isIdleStreamLocked(f.StreamID)
	c.mu.Unlock()
	if f.StreamID%2 == 0 || idle {
		return connError{http2.ErrCodeProtocol, "HEADERS on a stream the client did not open"}
	}
	if s == nil {
		return nil
	}
	s.onResponseHeaders(f)
	return nil
}

// readData reads a DATA frame payload straight into the stream's receive
// buffer: no intermediate frame buffer, one copy out of crypto/tls.
func (c *conn) readData(fh http2.FrameHeader) error {
	id := fh.StreamID
	if id == 0 {
		return connError{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	length := int64(fh.Length)
	c.mu.Lock()
	if length > c.recv.avail {
		c.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "connection window exceeded"}
	}
	c.recv.avail -= length
	s := c.streams[id]
	idle := c.isIdleStreamLocked(id)
	c.mu.Unlock()
	if idle || (c.client && id%2 == 0) {
		return connError{http2.ErrCodeProtocol, "DATA on idle stream"}
	}
	var pad int64
	dataLen := length
	if fh.Flags.Has(http2.FlagDataPadded) {
		var b [1]byte
		if length < 1 {
			return connError{http2.ErrCodeProtocol, "padded DATA without pad length"}
		}
		if _, err := io.ReadFull(c.rl, b[:]); err != nil {
			return c.frameErr(err)
		}
		pad = int64(b[0])
		if pad >= length {
			return connError{http2.ErrCodeProtocol, "DATA padding exceeds payload"}
		}
		dataLen = length - 1 - pad
	}
	if s == nil {
		// A stream we already closed or reset: ignore, but keep the window.
		if err := c.discard(dataLen + pad); err != nil {
			return err
		}
		c.creditConn(length)
		return nil
	}
	keep, code := s.admit(length)
	if !keep {
		if err := c.discard(dataLen + pad); err != nil {
			return err
		}
		c.creditConn(length)
		if code == 0 {
			s.creditStream(length)
		} else {
			s.resetLocal(code)
		}
		return nil
	}
	if err := s.fill(c.rl, dataLen); err != nil {
		return c.frameErr(err)
	}
	if length > dataLen {
		if err := c.discard(pad); err != nil {
			return err
		}
		c.creditConn(length - dataLen)
		s.creditStream(length - dataLen)
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		s.onRemoteEnd()
	}
	return nil
}

// creditConn returns n consumed bytes to the peer's connection window.
func (c *conn) creditConn(n int64) {
	c.mu.Lock()
	inc := c.recv.credit(n, connWindow)
	c.mu.Unlock()
	if inc > 0 {
		c.enqueue(wreq{kind: wWindowUpdate, streamID: 0, val: uint32(inc)})
	}
}

// recvWindow is a receive window as the peer sees it: what it may still
// send, and what was consumed but not yet credited back.
type recvWindow struct{ avail, unacked int64 }

// credit records n consumed bytes and returns the WINDOW_UPDATE increment to
// send: the consumed bytes once they reach a quarter of size, else 0.
func (w *recvWindow) credit(n, size int64) int64 {
	w.unacked += n
	if w.unacked < size/creditDivisor {
		return 0
	}
	inc := w.unacked
	w.avail += inc
	w.unacked = 0
	return inc
}

// removeIfDone drops s from the stream table once both directions ended.
func (c *conn) removeIfDone(s *stream) {
	c.mu.Lock()
	s.mu.Lock()
	done := s.localEnd && s.remoteEnd && !s.removed
	if done {
		s.removed = true
	}
	s.mu.Unlock()
	if !done {
		c.mu.Unlock()
		return
	}
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
	}
	n := len(c.streams)
	c.open.Store(int32(n))
	if n == 0 {
		c.idleSince = time.Now()
	}
	drain := n == 0 && c.reserved == 0 && (c.goAwaySent || c.goAwayRecv) && !c.closed
	// The timer loop only needs waking when the idle deadline comes before its next
	// wake-up (which usually is the keepalive check): a wake-up per connection saved.
	kick := n == 0 && c.idleTimeout > 0 && c.idleSince.Add(c.idleTimeout).Before(c.timerAt)
	c.mu.Unlock()
	if kick {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	if drain {
		c.gracefulClose(errGoAway)
	}
	c.notify()
}

// ---- keepalive and idle ----

func (c *conn) timerLoop() {
	defer close(c.timerDone)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		next := now.Add(time.Hour)
		var ping, idle bool
		var pingData [8]byte
		c.mu.Lock()
		if c.pingInterval > 0 {
			if c.pingOut {
				dl := c.pingSent.Add(c.pingTimeout)
				if !now.Before(dl) {
					c.mu.Unlock()
					c.log.Info("hbone peer unresponsive", "timeout", c.pingTimeout)
					c.closeWith(errPingTimeout)
					return
				}
				next = minTime(next, dl)
			} else {
				due := time.Unix(0, c.lastRecv.Load()).Add(c.pingInterval)
				if !now.Before(due) {
					ping = true
					rand.Read(pingData[:])
					c.pingOut, c.pingData, c.pingSent = true, pingData, now
					next = minTime(next, now.Add(c.pingTimeout))
				} else {
					next = minTime(next, due)
				}
			}
		}
		if c.idleTimeout > 0 && len(c.streams) == 0 && c.reserved == 0 && !c.goAwaySent {
			dl := c.idleSince.Add(c.idleTimeout)
			if !now.Before(dl) {
				idle = true
				c.goAwaySent = true
			} else {
				next = minTime(next, dl)
			}
		}
		c.timerAt = next
		c.mu.Unlock()
		if ping {
			c.enqueue(wreq{kind: wPing, ping: pingData})
		}
		if idle {
			c.mu.Lock()
			last := c.maxPeerID
			c.mu.Unlock()
			c.enqueue(wreq{kind: wGoAway, streamID: last, val: uint32(http2.ErrCodeNo)})
			c.gracefulClose(errGoAway)
			c.notify()
		}
		t.Reset(next.Sub(now))
		select {
		case <-t.C:
		case <-c.kick:
		case <-c.closedCh:
			return
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
