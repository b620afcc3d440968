package demo

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/subsegment/subsegment_exporter/internal/demo/delayproxy"
)

// The HTTP chain of the demo: a -> HAProxy (h1) -> delay -> nginx (n1) ->
// backend, the backend being the source exporter's own landing page. It
// runs when HAProxy and nginx are installed.
const (
	h1Offset       = 20 // HAProxy listens on BasePort+20
	httpProxOffset = 21 // the delaying proxy in front of nginx
	n1Offset       = 22 // nginx
)

// httpModule is added to the demo's configuration with the HTTP chain.
const httpModule = `  web:
    prober: http
    timeout: 5s
    targets: ["127.0.0.1:*"]
    http:
      hops: [h1, n1]
    sla:
      default: 5ms
      segments:
        - {from: h1, to: n1, rtt: 15ms}
`

// httpContinuous draws the HTTP chain on the landing page too.
const httpContinuous = `  - {target: "http://127.0.0.1:%d/", module: web, interval: 200ms}
`

// httpTools finds HAProxy and nginx; ok is false when either is missing.
func httpTools() (haproxy, nginx string, ok bool) {
	find := func(name string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		if _, err := os.Stat("/usr/sbin/" + name); err == nil {
			return "/usr/sbin/" + name
		}
		return ""
	}
	haproxy, nginx = find("haproxy"), find("nginx")
	return haproxy, nginx, haproxy != "" && nginx != ""
}

// startHTTPChain starts nginx, the delaying proxy and HAProxy, with the
// lines docs/http-chains.md gives.
func (d *run) startHTTPChain(haproxy, nginx string) error {
	base := d.o.BasePort
	nginxConf := fmt.Sprintf(`daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;
  server {
    listen %[2]s;
    location / {
      proxy_pass http://%[3]s;
      add_header Subsegment-Timing "n1;dur=${request_time}s" always;
    }
  }
}
`, d.dir, d.addr(base+n1Offset), d.addr(base+100))
	nginxPath := filepath.Join(d.dir, "nginx.conf")
	if err := os.WriteFile(nginxPath, []byte(nginxConf), 0o644); err != nil {
		return fmt.Errorf("write the demo's nginx config: %w", err)
	}
	if err := d.procs.start(nginx, []string{"-c", nginxPath, "-e", "stderr"}, filepath.Join(d.dir, "nginx.log")); err != nil {
		return err
	}
	proxy, err := delayproxy.Start(d.addr(base+httpProxOffset), d.addr(base+n1Offset), d.o.Delay/2, d.o.Delay-d.o.Delay/2)
	if err != nil {
		return err
	}
	d.procs.onStop(proxy.Close)
	haproxyConf := fmt.Sprintf(`defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind %s
  http-request set-var(txn.subsegment_in) date(0,us)
  http-after-response add-header Subsegment-Timing "h1;dur=%%[date(0,us),sub(txn.subsegment_in)]us"
  default_backend b
backend b
  server n1 %s
`, d.addr(base+h1Offset), d.addr(base+httpProxOffset))
	haproxyPath := filepath.Join(d.dir, "haproxy.cfg")
	if err := os.WriteFile(haproxyPath, []byte(haproxyConf), 0o644); err != nil {
		return fmt.Errorf("write the demo's haproxy config: %w", err)
	}
	return d.procs.start(haproxy, []string{"-f", haproxyPath, "-db"}, filepath.Join(d.dir, "haproxy.log"))
}

// httpGuide says what the HTTP chain is and what to open, or how to get it.
func (d *run) httpGuide(running bool) {
	if !running {
		d.out.printf(`
The HTTP chain (a -> HAProxy -> nginx -> backend) needs HAProxy and nginx:
  apt-get install haproxy nginx-light   (then run make demo again)
`)
		return
	}
	exporterURL := "http://" + d.addr(d.o.BasePort+100)
	target := "http://" + d.addr(d.o.BasePort+h1Offset) + "/"
	d.out.printf(`
The HTTP chain a -> h1 (HAProxy) -> n1 (nginx) -> backend is running; h1 -> n1 goes through a
proxy that adds %v. Each proxy stamps a Subsegment-Timing response header:
  probe, as Prometheus scrapes it:
    curl -s '%s/probe?target=%s&module=web' | grep -v '^#'
  one-shot probe:       %s probe %s --relay.name a
`, d.o.Delay, exporterURL, target, d.o.Executable, target)
}
