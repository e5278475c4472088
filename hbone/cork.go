package hbone

import (
	"net"
	"sync"
)

// corkConn sits between crypto/tls and the TCP socket. crypto/tls issues one
// write syscall per TLS record; while corked, records are collected and sent
// with a single write when the connection's writer uncorks after a batch.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte

	// read-ahead state, owned by the single reader goroutine
	rbuf       *[]byte
	rpos, rend int
	bulk       bool
}

// corkFlushAt bounds the corked buffer; beyond it we write inline.
const corkFlushAt = 256 << 10

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.ensureBuf()
	c.buf = append(c.buf, p...)
	if len(c.buf) >= corkFlushAt {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if !c.corked {
		// Idle connections should not pin a write buffer.
		if cap(c.buf) <= 2*corkFlushAt {
			b := c.buf
			corkPool.Put(&b)
		}
		c.buf = nil
	}
	return err
}

var corkPool sync.Pool

func (c *corkConn) ensureBuf() {
	if c.buf == nil {
		if b, ok := corkPool.Get().(*[]byte); ok {
			c.buf = (*b)[:0]
		}
	}
}

// readBufSize is the read-ahead under crypto/tls. crypto/tls asks the socket for about one
// record (16 KiB) at a time; reading ahead turns a burst of records into one syscall.
const readBufSize = 128 << 10

var readPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// Read serves crypto/tls from a read-ahead buffer. Only one goroutine (the connection's
// reader) calls Read. While the peer sends little, reads go straight into the caller's
// buffer and no read-ahead buffer is held; once a read fills the caller's buffer (a bulk
// transfer), reads go through the read-ahead buffer, which returns to the pool as soon
// as it is drained.
func (c *corkConn) Read(p []byte) (int, error) {
	if c.rpos < c.rend {
		n := copy(p, (*c.rbuf)[c.rpos:c.rend])
		c.rpos += n
		if c.rpos == c.rend {
			c.releaseRead()
		}
		return n, nil
	}
	if !c.bulk || len(p) >= readBufSize {
		n, err := c.Conn.Read(p)
		c.bulk = n == len(p)
		return n, err
	}
	if c.rbuf == nil {
		c.rbuf = readPool.Get().(*[]byte)
	}
	n, err := c.Conn.Read(*c.rbuf)
	c.bulk = n == len(*c.rbuf)
	c.rpos, c.rend = 0, n
	m := copy(p, (*c.rbuf)[:n])
	c.rpos = m
	if c.rpos == c.rend {
		c.releaseRead()
	}
	if m > 0 {
		return m, nil // a read error is seen again on the next call
	}
	return 0, err
}

func (c *corkConn) releaseRead() {
	if c.rbuf != nil {
		readPool.Put(c.rbuf)
		c.rbuf = nil
	}
	c.rpos, c.rend = 0, 0
}
