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
