package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"
)

// seconds is a duration flag that also takes the original tool's bare
// number of seconds: -t 5 is 5s, -t 0.5 is 500ms; units keep working.
type seconds struct{ d *time.Duration }

func (s seconds) Set(v string) error {
	d, err := parseSeconds(v)
	if err != nil {
		return err
	}
	*s.d = d
	return nil
}

func (s seconds) String() string {
	if s.d == nil {
		return ""
	}
	return s.d.String()
}

func parseSeconds(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f < 0 || f > float64(1<<62)/1e9 || f != f {
			return 0, fmt.Errorf("duration %q out of range", v)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("duration %q: give seconds (5, 0.5) or a unit (5s, 250ms)", v)
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %q is negative", v)
	}
	return d, nil
}

// durationVar binds a flag to d with the seconds syntax.
func durationVar(f *kingpin.FlagClause, d *time.Duration) {
	f.SetValue(seconds{d})
}
