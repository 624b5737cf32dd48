package httpx

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// Only a trusted proxy's X-Forwarded-For is believed, and of it only the
// right-most address that is not a trusted proxy: what a client wrote on
// the left is not.
func TestTrustProxies(t *testing.T) {
	proxies, err := ParseProxies([]string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32"})
	if err != nil {
		t.Fatal(err)
	}
	var got string
	h := TrustProxies(proxies, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.RemoteAddr }))
	for _, c := range []struct{ remote, xff, want string }{
		{"10.1.2.3:5555", "203.0.113.9", "203.0.113.9:0"},
		{"10.1.2.3:5555", "198.51.100.1, 203.0.113.9", "203.0.113.9:0"},      // the left is the client's say
		{"10.1.2.3:5555", "203.0.113.9, 10.9.9.9", "203.0.113.9:0"},          // a chain of trusted proxies
		{"[2001:db8::1]:443", "2001:db8::2, 198.51.100.4", "198.51.100.4:0"}, // IPv6 proxies
		{"192.0.2.7:1", "", "192.0.2.7:1"},                                   // nothing forwarded
		{"10.1.2.3:5555", "not-an-ip", "10.1.2.3:5555"},
		{"10.1.2.3:5555", "10.0.0.1, 10.0.0.2", "10.0.0.1:0"},      // all trusted: the first
		{"203.0.113.50:1234", "198.51.100.1", "203.0.113.50:1234"}, // not a trusted proxy
	} {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		r.RemoteAddr = c.remote
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
		if got != c.want {
			t.Errorf("from %s forwarding %q: %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
	if _, err := ParseProxies([]string{"10.0.0.0/33"}); err == nil {
		t.Error("a bad prefix was taken")
	}
}
