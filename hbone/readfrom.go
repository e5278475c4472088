package hbone

import (
	"io"
	"sync"
	"syscall"
)

// Slot buffers for ReadFrom: one record slot while a connection is quiet, slotsBulk
// (512 KiB of payload, one socket read and one socket write) while it moves bulk data.
const slotsBulk = 32

var (
	slotsSmallPool = sync.Pool{New: func() any { b := make([]byte, slotLen); return &b }}
	slotsBulkPool  = sync.Pool{New: func() any { b := make([]byte, slotsBulk*slotLen); return &b }}
)

// byteCounter is implemented by a reader that wants to know, as ReadFrom goes, how
// many of its bytes were sent (live byte counts of a long transfer).
type byteCounter interface{ CountBytes(n int64) }

// ReadFrom sends what r yields until EOF, as io.Copy into the stream would. From a
// socket it reads straight into the TLS records that will carry the data (a readv into
// the payload of each record's DATA frame), so the bytes are copied once, by the
// kernel, before they are sealed in place. If r has a CountBytes(int64) method, it is
// called with the bytes sent after each send.
func (s *stream) ReadFrom(r io.Reader) (int64, error) {
	count := func(int64) {}
	if bc, ok := r.(byteCounter); ok {
		count = bc.CountBytes
	}
	if sc, ok := r.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			if n, ok, err := s.readFromSocket(rc, count); ok {
				return n, err
			}
		}
	}
	buf := getBuf(32 << 10)
	buf = buf[:cap(buf)]
	defer putBuf(buf)
	var total int64
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, err := s.Write(buf[:n]); err != nil {
				return total, err
			}
			total += int64(n)
			count(int64(n))
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// sendSlots sends the n payload bytes read into buf's record slots, sealed in place, in
// as few batches as the flow-control windows allow. Short of window, it sends the whole
// slots the window covers and waits for more for the rest: a bulk sender runs into its
// window whenever the receiver's destination is slower, and the window comes back a
// quarter at a time, so the rest goes out as one batch again instead of a write per
// record.
func (s *stream) sendSlots(buf []byte, n int) error {
	if err := s.acquireWrite(); err != nil {
		return err
	}
	defer s.releaseWrite()
	for off := 0; off < n; { // off is on a slot boundary
		k, err := s.reserve(n-off, true)
		if err != nil {
			return err
		}
		for off+k < n {
			more, err := s.reserve(n-off-k, false)
			if err != nil {
				s.unreserve(k)
				return err
			}
			if more == 0 {
				break
			}
			k += more
		}
		if j := k % slotPayload; off+k < n && j > 0 {
			if k < slotPayload {
				// Less window than a slot: this slot goes the copying way, in pieces as
				// the window allows (sealing in place would overwrite the rest of its
				// data with the record's tag).
				s.unreserve(k)
				seg := slotData(buf, off/slotPayload)[:min(slotPayload, n-off)]
				if _, err := s.writeAll(seg); err != nil {
					return err
				}
				off += len(seg)
				continue
			}
			s.unreserve(j)
			k -= j
		}
		if err := s.send(wreq{kind: wSlots, data: buf[off/slotPayload*slotLen:], val: uint32(k)}, k); err != nil {
			return err
		}
		off += k
	}
	return nil
}
