package httpstamp

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/subsegment/subsegment_exporter/internal/wire/peer"
)

func TestParse(t *testing.T) {
	us, ms := time.Microsecond, time.Millisecond
	for _, c := range []struct {
		name   string
		values []string
		want   []Entry
		err    string
	}{
		{"haproxy", []string{"h1;dur=2226us"}, []Entry{{Hop: "h1", Duration: 2226 * us, Resolution: us}}, ""},
		{"nginx", []string{"n1;dur=0.002s"}, []Entry{{Hop: "n1", Duration: 2 * ms, Resolution: ms}}, ""},
		{"apache %D", []string{"a1;dur=D=2197us"}, []Entry{{Hop: "a1", Duration: 2197 * us, Resolution: us}}, ""},
		{"ms with decimals", []string{"x;dur=20.25ms"}, []Entry{{Hop: "x", Duration: 20250 * us, Resolution: 10 * us}}, ""},
		{"two headers and a list", []string{"n1;dur=0.002s", "h1;dur=2226us, e.1;desc=\"edge\";dur=3ms"},
			[]Entry{{Hop: "n1", Duration: 2 * ms, Resolution: ms}, {Hop: "h1", Duration: 2226 * us, Resolution: us, Position: 1}, {Hop: "e.1", Duration: 3 * ms, Resolution: ms, Position: 2}}, ""},
		{"spaces and empty items", []string{" n1 ; dur = 1ms ,, "}, []Entry{{Hop: "n1", Duration: ms, Resolution: ms}}, ""},
		{"no entries", []string{""}, nil, ""},
		{"no unit", []string{"h1;dur=2226"}, nil, `"h1;dur=2226": dur has no unit`},
		{"no dur", []string{"h1;desc=x"}, nil, `has no dur=`},
		{"dur twice", []string{"h1;dur=1ms;dur=2ms"}, nil, `has dur twice`},
		{"negative", []string{"h1;dur=-1ms"}, nil, "not a plain decimal"},
		{"exponent", []string{"h1;dur=1e3us"}, nil, "not a plain decimal"},
		{"hex", []string{"h1;dur=0x10us"}, nil, "not a plain decimal"},
		{"NaN", []string{"h1;dur=NaNs"}, nil, "not a plain decimal"},
		{"trailing dot", []string{"h1;dur=1.ms"}, nil, "not a plain decimal"},
		{"too long", []string{"h1;dur=90000s"}, nil, "dur over 24h0m0s"},
		{"a day exactly", []string{"h1;dur=86400s"}, []Entry{{Hop: "h1", Duration: 24 * time.Hour, Resolution: time.Second}}, ""},
		{"a nanosecond over a day", []string{"h1;dur=86400.000000001s"}, nil, "dur over 24h0m0s"},
		// Past what time.Duration holds: the conversion used to wrap to
		// a negative value that passed the range check.
		{"overflow", []string{"be;dur=10000000000s"}, nil, `"be;dur=10000000000s": dur over 24h0m0s`},
		{"overflow, largest accepted digits", []string{"be;dur=999999999999.999999999s"}, nil, "dur over 24h0m0s"},
		{"overflow in ms", []string{"be;dur=999999999999ms"}, nil, "dur over 24h0m0s"},
		{"overflow after D=", []string{"a1;dur=D=999999999999s"}, nil, "dur over 24h0m0s"},
		{"bad name", []string{"h 1;dur=1ms"}, nil, "hop"},
		{"hostile name", []string{"z\xff\"};dur=1ms"}, nil, `"z?\"};dur=1ms"`},
		{"too many", []string{strings.Repeat("h;dur=1ms,", 33)}, nil, "more than 32 entries"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.values)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || peer.Classify(err) != peer.ReasonBadHeader {
					t.Fatalf("error %v (%s), want bad_header containing %q", err, peer.Classify(err), c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			for i := range got {
				got[i].Text = ""
				if got[i] != c.want[i] {
					t.Errorf("entry %d: got %+v, want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}

func TestOutermost(t *testing.T) {
	parse := func(v ...string) []Entry {
		e, err := Parse(v)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	names := func(es []Entry) string {
		var out []string
		for _, e := range es {
			out = append(out, e.Hop)
		}
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		name string
		in   []Entry
		want string
	}{
		{"appended innermost first (HAProxy, nginx)", parse("n1;dur=0.020s", "h1;dur=20400us"), "h1 n1"},
		{"Apache's Header add appends too", parse("n1;dur=0.020s", "a1;dur=D=20400us"), "a1 n1"},
		{"Apache's Header always add puts its own first: values decide", parse("a1;dur=D=22400us", "n1;dur=0.020s"), "a1 n1"},
		{"a coarse inner value above the outer's, within resolution", parse("n1;dur=0.003s", "h1;dur=2226us"), "h1 n1"},
		{"three, values decide where they can", parse("e1;dur=50ms", "n1;dur=0.020s", "h1;dur=20400us"), "e1 h1 n1"},
		{"equal values keep the received order", parse("x;dur=1ms", "y;dur=1ms"), "y x"},
	} {
		if got := names(Outermost(c.in)); got != c.want {
			t.Errorf("%s: got %s, want %s", c.name, got, c.want)
		}
	}
}

func TestDuplicate(t *testing.T) {
	e, _ := Parse([]string{"n1;dur=0.002s", "n1;dur=0.002s, h1;dur=2226us"})
	if d, ok := Duplicate(e); !ok || d.Position != 1 {
		t.Errorf("duplicate not found: %+v %v", d, ok)
	}
	e, _ = Parse([]string{"same;dur=0.002s", "same;dur=2226us"})
	if _, ok := Duplicate(e); ok {
		t.Error("two hops of one name taken for a duplicate")
	}
}

// FuzzParse: whatever a proxy sends, Parse neither panics nor returns an
// entry a label or a terminal cannot take.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"h1;dur=2226us", "n1;dur=0.002s, a1;dur=D=12us", "x;desc=\"a,b\";dur=1.5ms", "h1;dur=", ";dur=1s", "\xff;dur=1s", "be;dur=10000000000s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		entries, err := Parse([]string{v})
		if err != nil {
			if !errors.Is(err, ErrBadHeader) || !utf8.ValidString(err.Error()) {
				t.Fatalf("error not bad_header or not UTF-8: %q", err.Error())
			}
			return
		}
		for _, e := range entries {
			if peer.ValidateName(e.Hop) != nil || e.Duration < 0 || e.Duration > peer.MaxDuration || e.Resolution <= 0 {
				t.Fatalf("bad entry %+v from %q", e, v)
			}
		}
		if len(Outermost(entries)) != len(entries) {
			t.Fatal("Outermost lost entries")
		}
	})
}
