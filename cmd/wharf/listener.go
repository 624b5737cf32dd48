package main

import (
	"io"
	"net"
	"sync"
	"time"
)

// listen opens the server's listener: at most maxConns connections at once
// (0: no bound; further clients wait in the kernel's backlog until one
// closes), each of whose writes must make progress within writeTimeout
// (0: none). The bound is kept here rather than by x/net's
// netutil.LimitListener, whose connection wrapper hides the TCP
// connection's ReadFrom, and with it sendfile, from net/http.
func listen(addr string, maxConns int, writeTimeout time.Duration) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{Listener: ln, timeout: writeTimeout, closed: make(chan struct{})}
	if maxConns > 0 {
		l.slots = make(chan struct{}, maxConns)
	}
	return l, nil
}

// listener hands out progressConns, one slot each while slots has room.
type listener struct {
	net.Listener
	timeout time.Duration
	slots   chan struct{} // nil: no bound
	closed  chan struct{}
	once    sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	if l.slots != nil {
		select {
		case l.slots <- struct{}{}:
		case <-l.closed:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		l.release()
		return nil, err
	}
	return &progressConn{Conn: c, timeout: l.timeout, release: l.release}, nil
}

func (l *listener) release() {
	if l.slots != nil {
		<-l.slots
	}
}

func (l *listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// writeChunk is the most written under one deadline: a client slower than
// writeChunk per timeout is dropped, any faster one goes on however long
// its download takes.
const writeChunk = 256 << 10

// progressConn gives each chunk of a response its own write deadline, so
// the deadline moves with progress: a slow but moving client is served, a
// stalled one is dropped once a chunk has waited the whole timeout, and its
// goroutine, file and fill reference go with it.
type progressConn struct {
	net.Conn
	timeout time.Duration // 0: no deadline
	release func()        // gives the listener's slot back; nil for none
	once    sync.Once
}

func (c *progressConn) Close() error {
	err := c.Conn.Close()
	if c.release != nil {
		c.once.Do(c.release)
	}
	return err
}

// deadline starts the write deadline of the next chunk.
func (c *progressConn) deadline() error {
	if c.timeout <= 0 {
		return nil
	}
	return c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
}

func (c *progressConn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), writeChunk)
		if err := c.deadline(); err != nil {
			return n, err
		}
		m, err := c.Conn.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// ReadFrom keeps the kernel's sendfile for files (net/http hands a stored
// blob, or a fill's landed stretch, to the connection's ReadFrom as an
// *os.File behind an io.LimitedReader), a chunk per deadline. The chunks
// are limits on the file itself: a limit on a limit would hide the file
// from sendfile and copy through user space.
func (c *progressConn) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := c.Conn.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{c}, r)
	}
	src, lr := r, (*io.LimitedReader)(nil)
	if l, ok := r.(*io.LimitedReader); ok {
		src, lr = l.R, l
	}
	var total int64
	for lr == nil || lr.N > 0 {
		chunk := int64(writeChunk)
		if lr != nil {
			chunk = min(chunk, lr.N)
		}
		if err := c.deadline(); err != nil {
			return total, err
		}
		n, err := rf.ReadFrom(&io.LimitedReader{R: src, N: chunk})
		total += n
		if lr != nil {
			lr.N -= n
		}
		if err != nil || n < chunk {
			return total, err
		}
	}
	return total, nil
}
