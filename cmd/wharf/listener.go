package main

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// listen opens the server's listener: at most maxConns connections at once
// (0: no bound) and perAddr from one remote address (0: no bound), each of
// whose writes must make progress within writeTimeout (0: none). At the
// bound, the connection idle the longest (a keep-alive waiting for its
// next request) is closed to make room: a new client always gets a slot
// while idle ones hold them, and waits in the kernel's backlog only while
// every connection is busy. Past perAddr a new connection is closed at
// once. The bound is kept here rather than by x/net's
// netutil.LimitListener, whose connection wrapper hides the TCP
// connection's ReadFrom, and with it sendfile, from net/http. The server
// must report its connections' states to ConnState.
func listen(addr string, maxConns, perAddr int, writeTimeout time.Duration) (*listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{Listener: ln, timeout: writeTimeout, perAddr: perAddr, closed: make(chan struct{}),
		idle: make(chan struct{}, 1), conns: map[*progressConn]struct{}{}, byAddr: map[string]int{}}
	if maxConns > 0 {
		l.slots = make(chan struct{}, maxConns)
	}
	return l, nil
}

// listener hands out progressConns, one slot each while slots has room.
type listener struct {
	net.Listener
	timeout time.Duration
	perAddr int
	slots   chan struct{} // nil: no bound
	closed  chan struct{}
	idle    chan struct{} // a connection went idle: one may give way
	once    sync.Once

	mu     sync.Mutex
	conns  map[*progressConn]struct{}
	byAddr map[string]int
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := remoteIP(c)
		l.mu.Lock()
		full := l.perAddr > 0 && l.byAddr[addr] >= l.perAddr
		l.mu.Unlock()
		if full {
			c.Close()
			continue
		}
		if err := l.takeSlot(); err != nil {
			c.Close()
			return nil, err
		}
		pc := &progressConn{Conn: c, timeout: l.timeout, addr: addr, release: l.release}
		l.mu.Lock()
		l.conns[pc] = struct{}{}
		l.byAddr[addr]++
		l.mu.Unlock()
		return pc, nil
	}
}

// takeSlot waits for a free slot, closing the longest idle connection
// whenever there is one to make room.
func (l *listener) takeSlot() error {
	if l.slots == nil {
		return nil
	}
	for {
		select {
		case l.slots <- struct{}{}:
			return nil
		default:
		}
		l.closeIdlest()
		select {
		case l.slots <- struct{}{}:
			return nil
		case <-l.idle:
		case <-l.closed:
			return net.ErrClosed
		}
	}
}

// closeIdlest closes the connection idle the longest, if one is.
func (l *listener) closeIdlest() {
	var oldest *progressConn
	var since int64
	l.mu.Lock()
	for c := range l.conns {
		if t := c.idleSince.Load(); t != 0 && (oldest == nil || t < since) {
			oldest, since = c, t
		}
	}
	l.mu.Unlock()
	if oldest != nil {
		oldest.Close()
	}
}

// ConnState is http.Server.ConnState: it tells which connections are idle.
func (l *listener) ConnState(c net.Conn, st http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	pc, ok := c.(*progressConn)
	if !ok {
		return
	}
	if st == http.StateIdle {
		pc.idleSince.Store(time.Now().UnixNano())
		select {
		case l.idle <- struct{}{}:
		default:
		}
		return
	}
	pc.idleSince.Store(0)
}

func (l *listener) release(c *progressConn) {
	l.mu.Lock()
	delete(l.conns, c)
	if l.byAddr[c.addr]--; l.byAddr[c.addr] <= 0 {
		delete(l.byAddr, c.addr)
	}
	l.mu.Unlock()
	if l.slots != nil {
		<-l.slots
	}
}

func (l *listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// remoteIP is the address connections are counted by.
func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
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
	timeout   time.Duration       // 0: no deadline
	addr      string              // the remote address, as the listener counts it
	release   func(*progressConn) // gives the listener's slot back; nil for none
	once      sync.Once
	idleSince atomic.Int64 // unix nanos since the server waits for its next request; 0: busy
}

func (c *progressConn) Close() error {
	err := c.Conn.Close()
	if c.release != nil {
		c.once.Do(func() { c.release(c) })
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
