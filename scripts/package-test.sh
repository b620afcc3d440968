#!/bin/sh
# package-test.sh DEB VERSION STATIC_BINARY — what `make package-test` (part of
# `make test`) proves about what we ship:
#   1. the static binary (the one the Dockerfile copies) has no dynamic
#      loader and runs as an unprivileged uid: a relay and a probe through it;
#   2. the Debian package installs with dpkg, its binary prints VERSION, its
#      man page renders, its example configuration loads, its units pass
#      `systemd-analyze verify` and stay under an exposure of 3 in
#      `systemd-analyze security`;
#   3. a relay and a source exporter started with the flags of the installed
#      defaults files (ports swapped for free ones) answer a /probe;
#   4. `dpkg --purge` removes everything it installed.
# Every process it starts is stopped by PID; the package is purged at the end
# unless it was installed before the test (then the tested one stays).
set -eu

deb=$1 version=$2 static=$3
pkg=prometheus-subsegment-exporter
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
step() { echo "package-test: $*"; }

tmp=$(mktemp -d)
pids=""
was_installed=""
dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && was_installed=1
cleanup() {
	for pid in $pids; do kill "$pid" 2>/dev/null || true; done
	for pid in $pids; do wait "$pid" 2>/dev/null || true; done
	if [ -z "$was_installed" ] && dpkg-query -W "$pkg" >/dev/null 2>&1; then
		dpkg --purge "$pkg" >/dev/null 2>&1 || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# A free TCP port on 127.0.0.1, from the kernel.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL: at most 100 tries, 0.1 s apart.
wait_http() {
	i=0
	while [ $i -lt 100 ]; do
		curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
		i=$((i + 1)); sleep 0.1
	done
	fail "$1 did not answer within 100 tries"
}

# probe_through BINARY: a relay on free ports as uid/gid 65534 (nobody, as the
# Dockerfile's USER), then a probe through it. Prints the probe's JSON.
relay_as_nobody() {
	bin=$1 port=$(free_port) web=$(free_port)
	setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
		"$bin" serve --listen="127.0.0.1:$port" --web.listen-address="127.0.0.1:$web" --relay.name=z \
		>"$tmp/relay.log" 2>&1 &
	pids="$pids $!"
	relay_pid=$!
	wait_http "http://127.0.0.1:$web/metrics"
	uid=$(awk '/^Uid:/ {print $2}' "/proc/$relay_pid/status")
	[ "$uid" = 65534 ] || fail "the relay runs as uid $uid, not 65534"
	"$bin" probe --count 3 --relay.name=a --output json "127.0.0.1:$port" >"$tmp/probe.json" ||
		fail "probe through the relay running as nobody failed: $(cat "$tmp/probe.json")"
	grep -q '"to": *"z"' "$tmp/probe.json" || fail "probe JSON has no segment to z: $(cat "$tmp/probe.json")"
	kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
}

step "static binary $static"
[ -x "$static" ] || fail "$static missing: run make static"
if readelf -l "$static" | grep -q INTERP; then fail "$static asks for a dynamic loader (build it with CGO_ENABLED=0)"; fi
if readelf -d "$static" 2>/dev/null | grep -q NEEDED; then fail "$static needs shared libraries"; fi
relay_as_nobody "$static"

step "contents of $deb"
[ -f "$deb" ] || fail "$deb missing: run make package"
dpkg-deb --contents "$deb" >"$tmp/contents"
for path in ./usr/bin/subsegment_exporter ./usr/share/man/man1/subsegment_exporter.1.gz \
	./lib/systemd/system/subsegment-relay.service ./lib/systemd/system/subsegment-exporter.service \
	./etc/default/subsegment-relay ./etc/default/subsegment-exporter \
	./etc/subsegment_exporter/subsegment.yml ./usr/share/doc/$pkg/LICENSE; do
	grep -q " $path\$" "$tmp/contents" || fail "$deb lacks $path"
done
dpkg-deb --info "$deb" | grep -q "Version: $version\$" || fail "$deb is not version $version"

step "dpkg -i"
dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1 || fail "dpkg -i: $(cat "$tmp/dpkg.log")"
bin=/usr/bin/subsegment_exporter
$bin --version 2>&1 | grep -q "version $version " || fail "installed --version: $($bin --version 2>&1)"
set +e; out=$($bin check -V 2>&1); rc=$?; set -e
[ $rc = 3 ] || fail "check -V exited $rc, want 3 (UNKNOWN, as plugins do)"
echo "$out" | grep -q "$version" || fail "check -V does not print $version: $out"
man -l /usr/share/man/man1/subsegment_exporter.1.gz 2>/dev/null | grep -q -- '--relay.name' ||
	fail "the man page does not render or lacks the flags"
$bin --config.check --config.file=/etc/subsegment_exporter/subsegment.yml >"$tmp/check.log" 2>&1 ||
	fail "the example configuration does not load: $(cat "$tmp/check.log")"

step "systemd-analyze verify and security"
for unit in subsegment-relay.service subsegment-exporter.service; do
	systemd-analyze verify "/lib/systemd/system/$unit" >"$tmp/verify.log" 2>&1 ||
		fail "systemd-analyze verify $unit: $(cat "$tmp/verify.log")"
	if grep -q "$unit" "$tmp/verify.log"; then fail "systemd-analyze verify $unit: $(cat "$tmp/verify.log")"; fi
	systemd-analyze security --offline=yes --threshold=30 "/lib/systemd/system/$unit" >"$tmp/security.log" 2>&1 ||
		fail "systemd-analyze security $unit over 3.0: $(tail -1 "$tmp/security.log")"
	step "  $unit: $(grep -o 'Overall exposure level.*' "$tmp/security.log")"
done

step "installed relay and exporter, flags from /etc/default, free ports, as nobody"
relay_as_nobody "$bin"
# shellcheck disable=SC1091
relay_args=$(. /etc/default/subsegment-relay && echo "$ARGS")
# shellcheck disable=SC1091
exporter_args=$(. /etc/default/subsegment-exporter && echo "$ARGS")
relay_port=$(free_port) relay_web=$(free_port) exporter_web=$(free_port)
relay_args=$(echo "$relay_args" | sed -e "s/--listen=:9000/--listen=127.0.0.1:$relay_port/" -e "s/--web.listen-address=:9718/--web.listen-address=127.0.0.1:$relay_web/")
exporter_args=$(echo "$exporter_args" | sed -e "s/--web.listen-address=:9717/--web.listen-address=127.0.0.1:$exporter_web/")
case "$relay_args $exporter_args" in *":90"*|*":97"*) fail "the defaults files' ports changed: update this test ($relay_args / $exporter_args)";; esac
# shellcheck disable=SC2086 # ARGS is a list of flags, as systemd splits it
setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs $bin serve $relay_args --relay.name=z >"$tmp/r.log" 2>&1 &
pids="$pids $!"
# shellcheck disable=SC2086
setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs $bin serve $exporter_args --relay.name=a >"$tmp/e.log" 2>&1 &
pids="$pids $!"
wait_http "http://127.0.0.1:$relay_web/metrics"
wait_http "http://127.0.0.1:$exporter_web/metrics"
curl -fsS "http://127.0.0.1:$exporter_web/probe?target=127.0.0.1:$relay_port&module=default" >"$tmp/probe.txt" ||
	fail "/probe of the installed exporter: $(cat "$tmp/probe.txt" "$tmp/e.log")"
grep -q '^probe_success 1$' "$tmp/probe.txt" || fail "/probe did not succeed: $(grep -v '^#' "$tmp/probe.txt" | head -20)"
grep -q 'subsegment_segment_rtt_seconds{from="a",to="z"}' "$tmp/probe.txt" || fail "/probe has no a -> z segment"
curl -fsS "http://127.0.0.1:$exporter_web/metrics" | grep -q "subsegment_exporter_build_info{.*version=\"$version\"" ||
	fail "build_info of the installed exporter is not version $version"

if [ -n "$was_installed" ]; then
	step "the package was installed before this test: the tested version stays installed"
	exit 0
fi
step "dpkg --purge"
dpkg --purge "$pkg" >"$tmp/dpkg.log" 2>&1 || fail "dpkg --purge: $(cat "$tmp/dpkg.log")"
for path in /usr/bin/subsegment_exporter /etc/subsegment_exporter /etc/default/subsegment-relay /lib/systemd/system/subsegment-relay.service; do
	[ ! -e "$path" ] || fail "$path is left after dpkg --purge"
done
step "ok"
