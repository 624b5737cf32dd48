package main

import (
	"bytes"
	"io"
	"net"
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
		ln, err := listen("127.0.0.1:0", maxConns, time.Minute)
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
