package main

import (
	"io"
	"net"
	"time"

	"golang.org/x/net/netutil"
)

// listen opens the server's listener: at most maxConns connections at once
// (0: no bound; further clients wait in the kernel's backlog until one
// closes), each of whose writes must make progress within writeTimeout
// (0: none). netutil.LimitListener is the standard library's own semaphore
// listener, kept in x/net: smaller and better tried than one of ours.
func listen(addr string, maxConns int, writeTimeout time.Duration) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if writeTimeout > 0 {
		ln = progressListener{Listener: ln, timeout: writeTimeout}
	}
	if maxConns > 0 {
		ln = netutil.LimitListener(ln, maxConns)
	}
	return ln, nil
}

type progressListener struct {
	net.Listener
	timeout time.Duration
}

func (l progressListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &progressConn{Conn: c, timeout: l.timeout}, nil
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
	timeout time.Duration
}

func (c *progressConn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), writeChunk)
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
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
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
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
