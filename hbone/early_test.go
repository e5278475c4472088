package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// Data written before the server answered arrives once the handler accepts.
func TestDialEarlyDataBeforeAccept(t *testing.T) { onLayers(t, testDialEarlyDataBeforeAccept) }

func testDialEarlyDataBeforeAccept(t *testing.T) {
	release := make(chan struct{})
	h := HandlerFunc(func(s *Stream) {
		<-release // the client's data is already buffered here
		if err := s.Accept(); err != nil {
			return
		}
		io.Copy(s, s)
		s.CloseWrite()
	})
	_, addr := startServer(t, h, nil)
	p := newTestPool(t, nil)
	c, err := p.DialEarly(context.Background(), testReq(addr), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("early."), 20000) // more than one frame, less than a window
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	close(release)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: got %d bytes, want %d", len(got), len(msg))
	}
}

// DialEarly's requests say the client will not wait for the answer; Dial's do not.
func TestDialEarlyMarksRequest(t *testing.T) { onLayers(t, testDialEarlyMarksRequest) }

func testDialEarlyMarksRequest(t *testing.T) {
	got := make(chan bool, 1)
	h := HandlerFunc(func(s *Stream) {
		got <- s.Request().EarlyData
		if s.Accept() == nil {
			io.Copy(s, s)
			s.CloseWrite()
		}
	})
	_, addr := startServer(t, h, nil)
	p := newTestPool(t, nil)
	for _, early := range []bool{true, false} {
		dial := p.Dial
		if early {
			dial = func(ctx context.Context, req Request) (*Conn, error) { return p.DialEarly(ctx, req, nil) }
		}
		c, err := dial(context.Background(), testReq(addr))
		if err != nil {
			t.Fatal(err)
		}
		if v := <-got; v != early {
			t.Errorf("early %v: the server saw EarlyData %v", early, v)
		}
		c.Close()
	}
}

// A refusal surfaces as the same *StatusError on Read and then on Write.
func TestDialEarlyRefusal(t *testing.T) { onLayers(t, testDialEarlyRefusal) }

func testDialEarlyRefusal(t *testing.T) {
	tests := []struct {
		name     string
		handler  HandlerFunc
		sentinel error
	}{
		{"401", func(s *Stream) { s.Reject(StatusFor(ErrDenied), "policy") }, ErrDenied},
		{"503 unanswered", func(s *Stream) {}, ErrUpstream},
		{"400 reject", func(s *Stream) { s.Reject(StatusFor(ErrBadRequest), "bad") }, ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := startServer(t, tt.handler, nil)
			p := newTestPool(t, nil)
			c, err := p.DialEarly(context.Background(), testReq(addr), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello")) // may or may not fail: the answer races it
			_, err = c.Read(make([]byte, 10))
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("Read: %v, want %v", err, tt.sentinel)
			}
			var se *StatusError
			if !errors.As(err, &se) {
				t.Fatalf("Read: %T, want *StatusError", err)
			}
			if _, err := c.Write([]byte("more")); err == nil {
				t.Fatal("Write after a refusal succeeded")
			}
			if st := p.Stats(); st.Conns != 1 {
				t.Fatalf("a refusal must not cost the connection: %+v", st)
			}
		})
	}
}

// No answer before ctx ends: the stream is reset and Read fails.
func TestDialEarlyAnswerTimeout(t *testing.T) { onLayers(t, testDialEarlyAnswerTimeout) }

func testDialEarlyAnswerTimeout(t *testing.T) {
	release := make(chan struct{})
	h := HandlerFunc(func(s *Stream) { <-release })
	_, addr := startServer(t, h, nil)
	t.Cleanup(func() { close(release) })
	p := newTestPool(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	c, err := p.DialEarly(ctx, testReq(addr), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Fatalf("Read without an answer: %v, want an error", err)
	}
}

// Once answered, the dial context no longer matters.
func TestDialEarlyContextAfterAnswer(t *testing.T) { onLayers(t, testDialEarlyContextAfterAnswer) }

func testDialEarlyContextAfterAnswer(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	p := newTestPool(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	c, err := p.DialEarly(ctx, testReq(addr), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	one := []byte{7}
	if _, err := c.Write(one); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, one); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := c.Write(one); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, one); err != nil || one[0] != 7 {
		t.Fatalf("after cancel: %v %v", one, err)
	}
}

// DialEarly's first data goes out with the request: one socket write for both
// when the windows take it, and still all of it, in order, when they do not.
func TestDialEarlyFirstData(t *testing.T) { onLayers(t, testDialEarlyFirstData) }

func testDialEarlyFirstData(t *testing.T) {
	_, addr := startServer(t, echoHandler, nil)
	p, writes := writeCountingPool(t, nil)
	// A first stream, used to its end, opens the pooled connection and leaves
	// nothing (settings, acks) for later writes.
	warm, err := p.Dial(context.Background(), testReq(addr))
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(warm); err != nil {
		t.Fatal(err)
	}
	warm.Close()
	eventually(t, "warm-up stream gone", func() bool { return p.Stats().Streams == 0 })
	for _, tc := range []struct {
		name      string
		first     int
		oneWrite  bool // the request and first fit one socket write
		restAfter int
	}{
		{"one byte", 1, true, 0},
		{"several frames", 40000, true, 5000},
		{"beyond one grant", maxWriteChunk + 1, false, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := make([]byte, tc.first+tc.restAfter)
			for i := range msg {
				msg[i] = byte(i * 13)
			}
			before := writes.Load()
			c, err := p.DialEarly(context.Background(), testReq(addr), msg[:tc.first])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// crypto/tls writes each record with a system call of its own: there only a
			// batch that fits one record is one write.
			oneWrite := tc.oneWrite && (layerOf(t) == RecordsOwn || tc.first < 1000)
			if got := writes.Load() - before; oneWrite && got != 1 {
				t.Errorf("request and %d bytes of first data took %d socket writes, want 1", tc.first, got)
			}
			go func() {
				c.Write(msg[tc.first:])
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("echo: got %d bytes, want %d (or different content)", len(got), len(msg))
			}
		})
	}
}

// A request that came with data, or with the early-data header, gets its 200 in the
// same write as the handler's first frame; one without either gets it at Accept; a held
// 200 goes out alone after answerHold.
// Frame order on the wire shows it: a PING sent after Accept is answered before the 200
// exactly when the 200 is held.
func TestAnswerHeldForEarlyData(t *testing.T) { onLayers(t, testAnswerHeldForEarlyData) }

func testAnswerHeldForEarlyData(t *testing.T) {
	defer func(d time.Duration) { answerHold = d }(answerHold)
	connect := []string{":method", "CONNECT", ":authority", testAuthority}
	tests := []struct {
		name     string
		early    bool // data follows the request before the answer
		header   bool // the request says the client will not wait (headerEarlyData)
		hold     time.Duration
		then     func(s *Stream) // once the PING sent after Accept was answered
		held     bool            // the 200 comes after that PING's ACK
		wantData string          // the DATA right after the 200 ("" and !wantEnd: none)
		wantEnd  bool            // ... carries END_STREAM
	}{
		{name: "no early data", then: func(s *Stream) { s.Write([]byte("pong")) }, wantData: "pong"},
		{name: "early data, then data", early: true, held: true, then: func(s *Stream) { s.Write([]byte("pong")) }, wantData: "pong"},
		{name: "early header, then data", header: true, held: true, then: func(s *Stream) { s.Write([]byte("pong")) }, wantData: "pong"},
		{name: "early header, nothing to send", header: true, held: true, hold: time.Millisecond, then: func(*Stream) {}},
		{name: "early data, then CloseWrite", early: true, held: true, then: func(s *Stream) { s.CloseWrite() }, wantEnd: true},
		{name: "early data, nothing to send", early: true, held: true, hold: time.Millisecond, then: func(*Stream) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answerHold = time.Hour // only the timer's case waits for it
			if tt.hold > 0 {
				answerHold = tt.hold
			}
			gate, accepted, proceed, finished := make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})
			var once sync.Once
			release := func() { once.Do(func() { close(proceed) }) }
			h := HandlerFunc(func(s *Stream) {
				<-gate
				if err := s.Accept(); err != nil {
					t.Error(err)
					return
				}
				close(accepted)
				<-proceed
				tt.then(s)
				<-finished
			})
			_, addr := startServer(t, h, nil)
			defer close(finished)
			defer release()
			rc := dialRaw(t, addr)
			rc.start(t)
			hdrs := connect
			if tt.header {
				hdrs = append(hdrs[:len(hdrs):len(hdrs)], headerEarlyData, "1")
			}
			rc.headers(t, 1, hdrs...)
			if tt.early {
				if err := rc.wfr.WriteData(1, false, []byte("hi")); err != nil {
					t.Fatal(err)
				}
			}
			// The server handles frames in order: once it answered this PING it has the
			// request's data, so Accept sees it.
			var frames []http2.Frame
			rc.ping(t, 1, &frames)
			close(gate)
			<-accepted
			rc.ping(t, 2, &frames)
			if tt.held && len(frames) > 0 {
				t.Fatalf("got %v before the PING's ACK: the 200 was not held", frames)
			}
			release()
			want := 2
			if tt.wantData == "" && !tt.wantEnd {
				want = 1
			}
			for len(frames) < want {
				rc.next(t, &frames)
			}
			h0, ok := frames[0].(*http2.MetaHeadersFrame)
			if !ok || h0.StreamID != 1 || h0.PseudoValue("status") != "200" {
				t.Fatalf("first frame %v, want the 200 on stream 1", frames[0])
			}
			if want == 2 {
				d, ok := frames[1].(*http2.DataFrame)
				if !ok || string(d.Data()) != tt.wantData || d.StreamEnded() != tt.wantEnd {
					t.Fatalf("second frame %v, want DATA %q end %v", frames[1], tt.wantData, tt.wantEnd)
				}
			}
		})
	}
}

// ping sends a PING and reads frames until its ACK, keeping stream frames in frames.
func (rc *rawClient) ping(t *testing.T, n byte, frames *[]http2.Frame) {
	t.Helper()
	if err := rc.wfr.WritePing(false, [8]byte{n}); err != nil {
		t.Fatal(err)
	}
	for {
		if f := rc.next(t, frames); f != nil && f.IsAck() && f.Data[0] == n {
			return
		}
	}
}

// next reads one frame: stream frames go to frames, a PING is returned, SETTINGS are
// acknowledged, WINDOW_UPDATEs skipped.
func (rc *rawClient) next(t *testing.T, frames *[]http2.Frame) *http2.PingFrame {
	t.Helper()
	f, err := rc.fr.ReadFrame()
	if err != nil {
		t.Fatalf("read frame: %v (after %v)", err, *frames)
	}
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			rc.ack.WriteSettingsAck()
		}
	case *http2.PingFrame:
		return f
	case *http2.WindowUpdateFrame:
	case *http2.MetaHeadersFrame, *http2.DataFrame, *http2.RSTStreamFrame:
		*frames = append(*frames, f)
	default:
		t.Fatalf("unexpected %v", f)
	}
	return nil
}

// Answer tells a DialEarly stream's answer without reading from the stream.
func TestDialEarlyAnswer(t *testing.T) { onLayers(t, testDialEarlyAnswer) }

func testDialEarlyAnswer(t *testing.T) {
	tests := []struct {
		name     string
		handler  HandlerFunc
		wantCode int // 0: nil
	}{
		{"200", func(s *Stream) {
			if s.Accept() == nil {
				io.Copy(s, s)
				s.CloseWrite()
			}
		}, 0},
		{"503", func(s *Stream) { s.Reject(StatusFor(ErrUpstream), "upstream refused") }, 503},
		{"401", func(s *Stream) { s.Reject(StatusFor(ErrDenied), "policy") }, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := startServer(t, tt.handler, nil)
			p := newTestPool(t, nil)
			c, err := p.DialEarly(context.Background(), testReq(addr), []byte("hi"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = c.Answer(ctx)
			var se *StatusError
			switch {
			case tt.wantCode == 0 && err != nil:
				t.Fatalf("Answer: %v, want nil", err)
			case tt.wantCode != 0 && (!errors.As(err, &se) || se.Code != tt.wantCode):
				t.Fatalf("Answer: %v, want status %d", err, tt.wantCode)
			}
			if tt.wantCode == 0 {
				got := make([]byte, 2)
				if _, err := io.ReadFull(c, got); err != nil || string(got) != "hi" {
					t.Fatalf("after Answer read %q, %v", got, err)
				}
			}
		})
	}
	// No answer before ctx ended: ctx's error.
	release := make(chan struct{})
	_, addr := startServer(t, HandlerFunc(func(s *Stream) { <-release }), nil)
	t.Cleanup(func() { close(release) })
	c, err := newTestPool(t, nil).DialEarly(context.Background(), testReq(addr), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Answer(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Answer without an answer: %v, want the context's error", err)
	}
}
