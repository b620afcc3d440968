package integration

import (
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// chromium runs headless Chromium with args and returns its stdout.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	bin := requireTool(t, "chromium", "/usr/bin/chromium")
	base := []string{"--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--user-data-dir=" + t.TempDir()}
	cmd := exec.Command(bin, append(base, args...)...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.Output(); close(done) }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("chromium %v did not finish within 90s", args)
	}
	if err != nil {
		t.Fatalf("chromium %v: %v", args, err)
	}
	return string(out)
}

// colourPixels counts the pixels of img within 30 of (r, g, b).
func colourPixels(img image.Image, r, g, b int) int {
	n := 0
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			pr, pg, pb, _ := img.At(x, y).RGBA()
			d := abs(int(pr>>8)-r) + abs(int(pg>>8)-g) + abs(int(pb>>8)-b)
			if d < 30 {
				n++
			}
		}
	}
	return n
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func screenshot(t *testing.T, url string, w, h int) (image.Image, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("page-%dx%d.png", w, h))
	chromium(t, fmt.Sprintf("--window-size=%d,%d", w, h), "--screenshot="+path, url)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	return img, path
}

// TestChainPageInChromium: the landing page of an exporter probing b ->
// [20 ms] -> c -> z continuously, with a 10 ms SLA on b -> c, loaded in
// headless Chromium: b -> c is drawn red with its median, a -> b green,
// on a desktop and on a phone-sized screen; the page redraws itself.
func TestChainPageInChromium(t *testing.T) {
	z := startHop(t, "z", "")
	c := startHop(t, "c", z.addr)
	px := startDelay(t, c.addr, 10*time.Millisecond)
	b := startHop(t, "b", px.Addr())
	ex := startExporter(t, "a", fmt.Sprintf(`modules:
  default:
    targets: ["127.0.0.1:*"]
    sla:
      default: 5ms
      segments: [{from: b, to: c, rtt: 10ms}]
continuous:
  - {target: "%s", module: default, interval: 100ms}
`, b.addr))
	page := "http://" + ex.web + "/"
	eventually(t, 30*time.Second, "the chain's last minute", func() error {
		var api struct {
			Chains []struct {
				Segments []struct {
					From, To string
					Samples  int
				}
			}
		}
		if err := json.Unmarshal([]byte(httpGet(t, page+"api/v1/chains")), &api); err != nil {
			return err
		}
		if len(api.Chains) != 1 || len(api.Chains[0].Segments) != 3 || api.Chains[0].Segments[1].Samples < 10 {
			return fmt.Errorf("not yet: %+v", api.Chains)
		}
		return nil
	})

	// The DOM as Chromium built it, after the page's script redrew the
	// chains (virtual time runs its timer).
	first := regexp.MustCompile(`<div id="chains" data-updated="([^"]+)"`).FindStringSubmatch(httpGet(t, page))
	dom := chromium(t, "--virtual-time-budget=12000", "--dump-dom", page)
	segment := func(from, to string) (sla string, rtt float64, stroke string) {
		re := regexp.MustCompile(`<g class="segment" data-from="` + from + `" data-to="` + to + `" data-rtt-seconds="([0-9.e-]+)" data-p99-seconds="[^"]*" data-sla="([a-z]+)">\s*<line [^>]*stroke="(#[0-9a-f]+)"`)
		m := re.FindStringSubmatch(dom)
		if m == nil {
			t.Fatalf("no drawn segment %s -> %s in:\n%s", from, to, dom)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return m[2], v, m[3]
	}
	sla, rtt, stroke := segment("b", "c")
	if sla != "exceeded" || stroke != "#c62828" || rtt < 0.019 || rtt > 0.03 {
		t.Errorf("b -> c drawn with sla=%s stroke=%s rtt=%v; want exceeded, red, about 20 ms", sla, stroke, rtt)
	}
	if !regexp.MustCompile(`median 2[0-9]\.[0-9]{3} ms`).MatchString(dom) {
		t.Errorf("b -> c's median is not written on the drawing:\n%s", dom)
	}
	sla, rtt, stroke = segment("a", "b")
	if sla != "ok" || stroke != "#2e7d32" || rtt <= 0 || rtt > 0.005 {
		t.Errorf("a -> b drawn with sla=%s stroke=%s rtt=%v; want ok, green, under its 5 ms SLA", sla, stroke, rtt)
	}
	redrawn := regexp.MustCompile(`<div id="chains" data-updated="([^"]+)" data-redraws="([0-9]+)"`).FindStringSubmatch(dom)
	if first == nil {
		t.Fatalf("no chains section in the page")
	}
	// The page redraws itself: its script fetched /chains and replaced
	// the drawing in Chromium's DOM.
	if redrawn == nil || redrawn[1] <= first[1] {
		t.Errorf("the page did not redraw itself in Chromium (served at %s): %v", first[1], redrawn)
	}

	// Seen: red and green strokes on a desktop and on a phone's width.
	for _, size := range [][2]int{{1100, 1100}, {390, 1500}} {
		img, path := screenshot(t, page, size[0], size[1])
		red, green := colourPixels(img, 0xc6, 0x28, 0x28), colourPixels(img, 0x2e, 0x7d, 0x32)
		if red < 100 || green < 100 {
			t.Errorf("%dx%d screenshot %s: %d red and %d green pixels: the segments are not drawn in their colours", size[0], size[1], path, red, green)
		}
	}
}

// demoScreenshot is the README's picture of the demo's chain page: made
// by TestDemo, written to docs/ with UPDATE_SCREENSHOT=1 (make screenshot).
func demoScreenshot(t *testing.T, page string) {
	t.Helper()
	eventually(t, 30*time.Second, "both demo chains drawn", func() error {
		body := httpGet(t, page+"chains")
		if n := len(regexp.MustCompile(`<g class="segment"`).FindAllString(body, -1)); n < 6 {
			return fmt.Errorf("%d segments drawn", n)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // a few more probes in the windows
	img, path := screenshot(t, page, 1100, 1250)
	if red := colourPixels(img, 0xc6, 0x28, 0x28); red < 100 {
		t.Errorf("demo page screenshot %s: the slow segments are not drawn red (%d pixels)", path, red)
	}
	if os.Getenv("UPDATE_SCREENSHOT") == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("../docs/chain-page.png", b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote docs/chain-page.png")
}
