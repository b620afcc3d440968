package integration

import (
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/doccheck"
)

// The examples of docs/trace.md come from the namespace lab: a -> b -> c
// with 20 ms added at IP level on r1 -> r2, probed with --trace (the table
// and the JSON of the same chain).
func init() {
	outputScenarios["trace-table"] = func(t *testing.T, b doccheck.Block, _ map[string]string) {
		real := tracedLabRun(t).table
		t.Logf("real run:\n%s", real)
		sameShape(t, b, real)
	}
	jsonScenarios["trace"] = func(t *testing.T, _ map[string]string) string {
		real := tracedLabRun(t).json
		t.Logf("real run:\n%s", real)
		return real
	}
}

type tracedOutputs struct{ table, json string }

var (
	tracedOnce sync.Once
	traced     tracedOutputs
)

// tracedLabRun runs the documented command (and its JSON twin) once per
// test binary in the namespace lab.
func tracedLabRun(t *testing.T) tracedOutputs {
	t.Helper()
	tracedOnce.Do(func() {
		l := newTraceLab(t)
		l.chain(nil)
		l.delay(l.r1, "eth2", 33, 20*time.Millisecond)
		run := func(args ...string) string {
			argv := append([]string{"netns", "exec", l.a.NS, binary, "probe", labB, "--relay.name", "a", "--count", "5", "--trace"}, args...)
			out, err := exec.Command("ip", argv...).Output()
			if err != nil {
				t.Fatalf("probe %v: %v\n%s", args, err, out)
			}
			return string(out)
		}
		traced = tracedOutputs{table: run(), json: run("--output", "json")}
	})
	if traced.table == "" {
		t.Fatal("the traced lab run failed in an earlier test")
	}
	return traced
}
