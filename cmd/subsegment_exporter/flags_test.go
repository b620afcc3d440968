package main

import (
	"testing"
	"time"
)

// The original tool's -t 5 is seconds; units keep working.
func TestParseSeconds(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"5", 5 * time.Second, true},
		{"0.5", 500 * time.Millisecond, true},
		{"10", 10 * time.Second, true},
		{"250ms", 250 * time.Millisecond, true},
		{"1m", time.Minute, true},
		{" 3 ", 3 * time.Second, true},
		{"-1", 0, false},
		{"-5s", 0, false},
		{"five", 0, false},
		{"NaN", 0, false},
		{"1e300", 0, false},
		{"", 0, false},
	} {
		got, err := parseSeconds(tc.in)
		if (err == nil) != tc.ok || tc.ok && got != tc.want {
			t.Errorf("parseSeconds(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
