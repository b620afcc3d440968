package prober

import (
	"encoding/binary"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subsegment/subsegment_exporter/internal/testkit/chaintest"
	"github.com/subsegment/subsegment_exporter/internal/wire/frame"
	"github.com/subsegment/subsegment_exporter/relay"
)

// Hops started with one name (the original tool's invocation lines, all
// defaulting to the host name) stay apart: identities, not names, key
// every computation; labels are numbered in chain order.
func TestRepeatedNamesAreToldApart(t *testing.T) { chaintest.ForEachEngine(t, testRepeatedNames) }

func testRepeatedNames(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "same", "same", "same")
	o := opts(target)
	o.Source = "same"
	r := run(t, o)
	if !r.Success {
		t.Fatalf("probe failed: %+v", r.Failure)
	}
	if got, want := r.HopNames(), []string{"same", "same#2", "same#3", "same#4"}; !slices.Equal(got, want) {
		t.Fatalf("hops %v, want %v", got, want)
	}
	if got, want := segNames(r), []string{"same>same#2", "same#2>same#3", "same#3>same#4"}; !slices.Equal(got, want) {
		t.Fatalf("segments %v, want %v", got, want)
	}
	if !r.DuplicateNames {
		t.Error("DuplicateNames not set")
	}
	ids := map[string]bool{}
	for _, h := range r.Hops {
		if h.ID == "" || ids[h.ID] {
			t.Errorf("hop %s has identity %q (seen before: %v)", h.Name, h.ID, ids[h.ID])
		}
		ids[h.ID] = true
		if len(h.residences) != 5 {
			t.Errorf("hop %s has %d residences, want 5 (merged with another?)", h.Name, len(h.residences))
		}
	}
}

// Every hop takes request-in and reply-in from the kernel's receive
// stamps; its waits lie within its residence.
func TestKernelStampsAndWaits(t *testing.T) { chaintest.ForEachEngine(t, testKernelStamps) }

func testKernelStamps(t *testing.T) {
	target := chaintest.Chain(t, chaintest.ChainOptions{}, "b", "c", "z")
	r := run(t, opts(target))
	if !r.Success {
		t.Fatalf("probe failed: %+v", r.Failure)
	}
	for _, h := range r.Hops {
		if !h.KernelTimestamps {
			t.Errorf("hop %s: no kernel timestamps", h.Name)
		}
		if h.Wait.Min < 0 || h.Wait.Max > h.Residence.Max || h.Wait.Median > h.Residence.Median {
			t.Errorf("hop %s: wait %+v outside residence %+v", h.Name, h.Wait, h.Residence)
		}
	}
	for _, smp := range r.Samples[1:] {
		for i, rec := range smp.Records {
			if rec.WaitForward > rec.Forward || rec.WaitReturn > rec.Return || rec.WaitForward < 0 || rec.WaitReturn < 0 {
				t.Errorf("probe %d record %d: waits %v/%v outside %v/%v", smp.Seq, i, rec.WaitForward, rec.WaitReturn, rec.Forward, rec.Return)
			}
		}
	}
	s := r.Segment("c", "z")
	if s.TCP == nil || s.TCPFar == nil {
		t.Errorf("c -> z lacks a side of the kernel's view: near %v far %v", s.TCP, s.TCPFar)
	}
}

// A step of the realtime clock between the kernel's stamp and the hop's
// reading never becomes a negative or huge wait: the pair is dropped, the
// read time used, and the record says so.
func TestRealtimeStep(t *testing.T) { chaintest.ForEachEngine(t, testRealtimeStep) }

func testRealtimeStep(t *testing.T) {
	for _, step := range []time.Duration{time.Hour, -time.Hour} {
		var reads atomic.Int64
		stepped := func() int64 {
			now := time.Now().UnixNano()
			if reads.Add(1) > 4 {
				return now + int64(step)
			}
			return now
		}
		target := chaintest.Chain(t, chaintest.ChainOptions{Configure: func(name string, cfg *relay.Config) {
			if name == "c" {
				cfg.Realtime = stepped
			}
		}}, "b", "c", "z")
		o := opts(target)
		o.Count = 8
		r := run(t, o)
		if !r.Success {
			t.Fatalf("step %v: probe failed: %+v", step, r.Failure)
		}
		c := r.Hop("c")
		if c.KernelTimestamps {
			t.Errorf("step %v: c claims kernel stamps across the step", step)
		}
		if c.Wait.Min < 0 || c.Wait.Max > c.Residence.Max || c.Residence.Max > 0.1 {
			t.Errorf("step %v: c's wait %+v, residence %+v", step, c.Wait, c.Residence)
		}
		for _, s := range r.Segments {
			if s.RTT.Min <= 0 || s.RTT.Max > 0.1 {
				t.Errorf("step %v: segment %s -> %s rtt %+v", step, s.From, s.To, s.RTT)
			}
		}
	}
}

// A record the rules refuse (here: a wait longer than the time it is part
// of) is bad_frame, naming the hop by position: by the relay before it, or
// by the source when the hop is the first.
func TestRefusedRecordNamesTheHop(t *testing.T) { chaintest.ForEachEngine(t, testRefusedRecord) }

func testRefusedRecord(t *testing.T) {
	liar := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := chaintest.EndRecord("z")
		b := frame.AppendHop(nil, &rec)
		binary.BigEndian.PutUint64(b[13+24:], uint64(time.Second)) // forward wait of 1 s > forward 20 µs
		return chaintest.Reply(v, req, b, 1)
	})
	t.Run("first hop", func(t *testing.T) {
		r := run(t, opts(liar))
		f := r.Failure
		if f == nil || f.Reason != "bad_frame" || f.From != "a" || !strings.Contains(f.Message, "hop 1") || !strings.Contains(f.Message, "forward wait") {
			t.Fatalf("failure %+v", f)
		}
	})
	t.Run("behind a relay", func(t *testing.T) {
		b := chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: liar})
		r := run(t, opts(b))
		f := r.Failure
		if f == nil || f.Reason != "bad_frame" || f.From != "b" || !strings.Contains(f.Message, "hop 1 after b") || !strings.Contains(f.Message, "forward wait") {
			t.Fatalf("failure %+v", f)
		}
	})
}

// A hop whose name is not valid UTF-8 (same length, frame valid) is
// refused; its name never reaches a label. Behind a relay the relay refuses
// it; as the first hop the source does, and names it by position.
func TestHostileNameIsRefused(t *testing.T) { chaintest.ForEachEngine(t, testHostileName) }

func testHostileName(t *testing.T) {
	hostile := chaintest.Scripted(t, func(req []byte, v frame.View) []byte {
		rec := chaintest.EndRecord("zzzz")
		b := frame.AppendHop(nil, &rec)
		i := strings.LastIndex(string(b), "zzzz")
		copy(b[i:], "z\xff\"}")
		return chaintest.Reply(v, req, b, 1)
	})
	for _, first := range []bool{true, false} {
		target := hostile
		if !first {
			target = chaintest.StartRelay(t, relay.Config{Name: "b", ForwardTo: hostile})
		}
		r := run(t, opts(target))
		if r.Success || r.Failure == nil || r.Failure.Reason != "bad_frame" || !strings.Contains(r.Failure.Message, "not UTF-8") {
			t.Fatalf("first=%v: %+v", first, r.Failure)
		}
		for _, h := range r.Hops {
			if strings.ContainsRune(h.Name, 0xfffd) || !isPlain(h.Name) {
				t.Errorf("hop label %q", h.Name)
			}
		}
		if !isPlain(r.Failure.From) || !isPlain(r.Failure.To) {
			t.Errorf("failure labels %q -> %q", r.Failure.From, r.Failure.To)
		}
	}
}

func isPlain(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
