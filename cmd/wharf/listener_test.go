package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// sinkConn is a connection that records what its ReadFrom is handed.
type sinkConn struct {
	net.Conn
	got   bytes.Buffer
	files int // sources net's sendfile takes: a file, or a limit on one
	other int
}

func (s *sinkConn) SetWriteDeadline(time.Time) error { return nil }

func (s *sinkConn) ReadFrom(r io.Reader) (int64, error) {
	src := r
	if lr, ok := r.(*io.LimitedReader); ok {
		src = lr.R
	}
	if _, ok := src.(*os.File); ok {
		s.files++
	} else {
		s.other++
	}
	return s.got.ReadFrom(r)
}

// A file behind a limit, as net/http hands a blob over, reaches the
// connection as a file behind a limit, chunk by chunk: sendfile, not a
// copy through user space. The limit is honoured to the byte.
func TestProgressConnKeepsSendfile(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), (3*writeChunk+100)/16)
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sink := &sinkConn{}
	c := &progressConn{Conn: sink, timeout: time.Minute}
	want := int64(len(data) - 50)
	lr := &io.LimitedReader{R: f, N: want}
	n, err := c.ReadFrom(lr)
	if err != nil || n != want || lr.N != 0 || !bytes.Equal(sink.got.Bytes(), data[:want]) {
		t.Fatalf("sent %d of %d (limit left %d): %v", n, want, lr.N, err)
	}
	if sink.other != 0 || sink.files != 4 {
		t.Fatalf("the connection saw %d file sources and %d others, want 4 chunks of the file", sink.files, sink.other)
	}
}

// net/http turns a file into sendfile only when the connection the
// listener hands it has a ReadFrom: bounded or not, it must.
func TestListenerConnectionsKeepReadFrom(t *testing.T) {
	for _, maxConns := range []int{0, 2} {
		ln, err := listen("127.0.0.1:0", maxConns, 0, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.(io.ReaderFrom); !ok {
			t.Errorf("max_connections %d: the connection (%T) has no ReadFrom", maxConns, c)
		}
		c.Close()
		client.Close()
		ln.Close()
	}
}

// At max_connections the connection idle the longest gives way to a new
// one; busy ones (and new ones that sent nothing yet) never do.
func TestIdlestConnectionGivesWay(t *testing.T) {
	ln, err := listen("127.0.0.1:0", 3, 0, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var server []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		server = append(server, sc)
	}
	ln.ConnState(server[1], http.StateIdle) // idle first
	ln.ConnState(server[2], http.StateIdle)
	ln.ConnState(server[0], http.StateActive)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := ln.Accept(); err != nil {
		t.Fatal(err)
	}
	var closed []int
	for i, sc := range server {
		if _, err := sc.Write([]byte("x")); err != nil {
			closed = append(closed, i)
		}
	}
	if fmt.Sprint(closed) != "[1]" {
		t.Fatalf("closed %v, want [1], the connection idle the longest", closed)
	}
}

// Past max_connections_per_address a new connection from that address is
// closed at once; one from elsewhere, or once one of its own closed, is
// accepted.
func TestConnectionsPerAddress(t *testing.T) {
	ln, err := listen("127.0.0.1:0", 0, 2, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	var mine []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		mine = append(mine, c)
	}
	first, second := <-accepted, <-accepted
	// The third was closed by the listener: its read ends.
	mine[2].SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := mine[2].Read(make([]byte, 1)); err == nil {
		t.Fatal("a third connection from one address was kept")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("a third connection from one address was neither accepted nor closed")
	}
	from2 := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	if other, err := from2.Dial("tcp", ln.Addr().String()); err == nil {
		defer other.Close()
		if c := <-accepted; remoteIP(c) != "127.0.0.2" {
			t.Fatalf("accepted %s, want the other address", remoteIP(c))
		}
	}
	first.Close()
	again, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if c := <-accepted; c == nil {
		t.Fatal("no room after one of the address's connections closed")
	}
	second.Close()
}
