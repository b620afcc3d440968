package integration

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestTargetQueryArrivesWellFormed: a /probe target whose query holds a
// space, quotes and non-ASCII letters was sent as a malformed request
// line (nginx answered 400). The request line carries them
// percent-encoded, and the backend behind nginx decodes what was written.
func TestTargetQueryArrivesWellFormed(t *testing.T) {
	var mu sync.Mutex
	var seen []*url.URL
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL)
		mu.Unlock()
		_, _ = io.WriteString(w, "ok\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	_, n1 := startNginx(t, "n1", ln.Addr().String())
	ex := startExporter(t, "a", "modules:\n  web:\n    prober: http\n    targets: [\"127.0.0.1:*\"]\n")

	target := "http://" + n1 + `/search?q=a b&who="ünïcode"&pct=100%`
	body := httpGet(t, "http://"+ex.web+"/probe?module=web&target="+url.QueryEscape(target))
	if !strings.Contains(body, "probe_success 1") {
		t.Fatalf("/probe of %q through nginx:\n%s", target, grepLines(body, "probe_"))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 {
		t.Fatal("the backend saw no request")
	}
	u := seen[len(seen)-1]
	q := u.Query()
	if u.RawQuery != "q=a%20b&who=%22%C3%BCn%C3%AFcode%22&pct=100%25" || q.Get("q") != "a b" || q.Get("who") != `"ünïcode"` || q.Get("pct") != "100%" {
		t.Errorf("the backend saw query %q (decoded %v)", u.RawQuery, q)
	}
}
