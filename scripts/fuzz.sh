#!/bin/sh
# Runs every fuzz target of the module for FUZZTIME each (the seed corpora
# already ran as unit tests). A target fails the run when it finds an input
# that breaks it (the input is written to testdata/fuzz/<target>/ and shown).
#
# Go 1.26's fuzzing coordinator can fail a target at the end of -fuzztime with
# a bare "context deadline exceeded" although nothing was found (a race
# between its deadline and its workers' context, go.dev/issue/75804, fixed in
# Go 1.27). That failure writes no input; it is retried, at most twice, and
# three in a row fail the run.
set -eu
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

for pkg in $($GO list ./...); do
	dir=$($GO list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
		attempt=1
		while :; do
			echo "fuzz $pkg $target ($FUZZTIME)"
			if $GO test -run '^$' -fuzz "^$target\$" -fuzztime "$FUZZTIME" "$pkg" >"$out" 2>&1; then
				break
			fi
			if grep -q 'context deadline exceeded' "$out" &&
				! grep -q -e 'Failing input written' -e 'panic:' -e 'hung or terminated' "$out" &&
				[ "$attempt" -lt 3 ]; then
				echo "fuzz $target: Go's coordinator stopped with a bare deadline and no failing input (go.dev/issue/75804); retrying"
				attempt=$((attempt + 1))
				continue
			fi
			grep -v 'execs: ' "$out" >&2
			echo "fuzz $pkg $target failed (output above)" >&2
			exit 1
		done
	done
done
