#!/bin/sh
# package-test.sh DEB VERSION STATIC_BINARY — what `make package-test` (part of
# `make test`) proves about what we ship:
#   1. the static binary (the one the Dockerfile copies) has no dynamic
#      loader and runs as an unprivileged uid: a relay and a probe through it;
#   2. the Debian package installs with dpkg (twice: a reinstall keeps it
#      as it was), its binary prints VERSION, its man page renders, its
#      example configuration loads; it creates the system user and group
#      subsegment, and the configuration (it holds secrets) is 0640
#      root:subsegment in a 0750 root:subsegment directory, unreadable by
#      others; its units run as that user, allow AF_NETLINK, pass
#      `systemd-analyze verify` and stay at an exposure of at most 1.9 (the
#      level of the units before they had a static user) in
#      `systemd-analyze security`; its example drop-ins (CAP_NET_RAW for
#      traces, CAP_NET_BIND_SERVICE for STAMP on port 862) set their
#      capability in the bounding and the ambient set both, and keep the
#      relay's unit verified and within that exposure;
#   3. a relay and a source exporter started as the package's user with the
#      flags of the installed defaults files (ports swapped for free ones)
#      read the installed configuration and answer a /probe;
#   4. `dpkg --remove` stops them (prerm), and leaves a process of another
#      user alone; `dpkg --purge` removes everything it installed and the
#      link an administrator's `systemctl enable` made (deb-systemd-helper).
# Every process it starts is stopped by PID; the package is purged at the end
# unless it was installed before the test (then the tested one stays), and
# the user and group are removed if the test created them.
set -eu

deb=$1 version=$2 static=$3
pkg=prometheus-subsegment-exporter
user=subsegment
conf=/etc/subsegment_exporter/subsegment.yml
# The exposure `systemd-analyze security` gave both units before they had a
# static user (DynamicUser): they must stay at it or better.
max_exposure=1.9
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
step() { echo "package-test: $*"; }

tmp=$(mktemp -d)
pids=""
was_installed="" user_existed="" group_existed=""
dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && was_installed=1
getent passwd "$user" >/dev/null && user_existed=1
getent group "$user" >/dev/null && group_existed=1
cleanup() {
	for pid in $pids; do kill "$pid" 2>/dev/null || true; done
	for pid in $pids; do wait "$pid" 2>/dev/null || true; done
	if [ -z "$was_installed" ] && dpkg-query -W "$pkg" >/dev/null 2>&1; then
		dpkg --purge "$pkg" >/dev/null 2>&1 || true
	fi
	# The package keeps its user on purge (as Debian's packages do); the
	# test removes what it made.
	if [ -z "$was_installed" ]; then
		[ -n "$user_existed" ] || ! getent passwd "$user" >/dev/null || userdel "$user" || true
		[ -n "$group_existed" ] || ! getent group "$user" >/dev/null || groupdel "$user" || true
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

# owner_mode PATH: "MODE OWNER GROUP"
owner_mode() { stat -c '%a %U %G' "$1"; }

# check_install: the user, the group and the configuration's owner and mode.
check_install() {
	entry=$(getent passwd "$user") || fail "dpkg -i made no user $user"
	uid=$(echo "$entry" | cut -d: -f3) gid=$(echo "$entry" | cut -d: -f4)
	home=$(echo "$entry" | cut -d: -f6) shell=$(echo "$entry" | cut -d: -f7)
	sys_uid_max=$(awk '$1 == "SYS_UID_MAX" {print $2}' /etc/login.defs 2>/dev/null)
	[ "$uid" -gt 0 ] && [ "$uid" -le "${sys_uid_max:-999}" ] || fail "$user has uid $uid, not a system uid (1-${sys_uid_max:-999})"
	[ "$(getent group "$user" | cut -d: -f3)" = "$gid" ] || fail "$user's primary group is $gid, not the group $user"
	[ "$shell" = /usr/sbin/nologin ] || fail "$user has the shell $shell, not /usr/sbin/nologin"
	[ ! -e "$home" ] || fail "$user has the home $home, which exists"
	[ "$(owner_mode "$conf")" = "640 root $user" ] || fail "$conf is $(owner_mode "$conf"), want 640 root $user"
	[ "$(owner_mode "$(dirname "$conf")")" = "750 root $user" ] || fail "$(dirname "$conf") is $(owner_mode "$(dirname "$conf")"), want 750 root $user"
	if setpriv --reuid=65534 --regid=65534 --clear-groups cat "$conf" >/dev/null 2>&1; then
		fail "$conf is readable by nobody"
	fi
	setpriv --reuid="$user" --regid="$user" --init-groups cat "$conf" >/dev/null 2>&1 || fail "$conf is not readable by $user"
}

step "dpkg -i"
dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1 || fail "dpkg -i: $(cat "$tmp/dpkg.log")"
check_install
step "  user $(getent passwd "$user"); $conf $(owner_mode "$conf")"
step "dpkg -i again (a reinstall: the user is kept, the modes stay)"
dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1 || fail "dpkg -i a second time: $(cat "$tmp/dpkg.log")"
check_install
bin=/usr/bin/subsegment_exporter
$bin --version 2>&1 | grep -q "version $version " || fail "installed --version: $($bin --version 2>&1)"
set +e; out=$($bin check -V 2>&1); rc=$?; set -e
[ $rc = 3 ] || fail "check -V exited $rc, want 3 (UNKNOWN, as plugins do)"
echo "$out" | grep -q "$version" || fail "check -V does not print $version: $out"
man -l /usr/share/man/man1/subsegment_exporter.1.gz 2>/dev/null | grep -q -- '--relay.name' ||
	fail "the man page does not render or lacks the flags"
$bin --config.check --config.file=/etc/subsegment_exporter/subsegment.yml >"$tmp/check.log" 2>&1 ||
	fail "the example configuration does not load: $(cat "$tmp/check.log")"

step "systemd units: user, address families, systemd-analyze verify and security"
threshold=$(echo "$max_exposure" | tr -d .)
for unit in subsegment-relay.service subsegment-exporter.service; do
	file=/lib/systemd/system/$unit
	grep -qx "User=$user" "$file" && grep -qx "Group=$user" "$file" || fail "$unit does not run as $user"
	if grep -q '^DynamicUser=' "$file"; then fail "$unit has DynamicUser= (its user could not read the configuration)"; fi
	grep -q '^RestrictAddressFamilies=.*AF_NETLINK' "$file" || fail "$unit does not allow AF_NETLINK (link-local IPv6 with a %zone)"
	systemd-analyze verify "$file" >"$tmp/verify.log" 2>&1 ||
		fail "systemd-analyze verify $unit: $(cat "$tmp/verify.log")"
	if grep -q "$unit" "$tmp/verify.log"; then fail "systemd-analyze verify $unit: $(cat "$tmp/verify.log")"; fi
	systemd-analyze security --offline=yes --threshold="$threshold" "$file" >"$tmp/security.log" 2>&1 ||
		fail "systemd-analyze security $unit over $max_exposure: $(tail -1 "$tmp/security.log")"
	step "  $unit: $(grep -o 'Overall exposure level.*' "$tmp/security.log")"
done

# check_dropin NAME CAP: an example drop-in, installed, applied to the relay's
# unit: verified, within the exposure, and its capability in the unit's
# bounding set and ambient set both (an ambient capability outside the
# bounding set is dropped by systemd: review finding 12).
check_dropin() {
	dropin=/usr/share/doc/$pkg/examples/$1
	[ -f "$dropin" ] || fail "$dropin is not installed"
	for key in AmbientCapabilities CapabilityBoundingSet; do
		grep -qx "$key=$2" "$dropin" || fail "$dropin does not set $key=$2"
	done
	rm -rf "$tmp/units" && mkdir -p "$tmp/units/subsegment-relay.service.d"
	cp /lib/systemd/system/subsegment-relay.service "$tmp/units/"
	cp "$dropin" "$tmp/units/subsegment-relay.service.d/"
	systemd-analyze verify "$tmp/units/subsegment-relay.service" >"$tmp/verify.log" 2>&1 ||
		fail "systemd-analyze verify with $1: $(cat "$tmp/verify.log")"
	systemd-analyze security --offline=yes --threshold="$threshold" "$tmp/units/subsegment-relay.service" >"$tmp/security.log" 2>&1 ||
		fail "systemd-analyze security with $1 over $max_exposure: $(tail -1 "$tmp/security.log")"
	grep -q '✗ CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)' "$tmp/security.log" || fail "$1 did not apply: $(cat "$tmp/security.log")"
	step "  with $1: $(grep -o 'Overall exposure level.*' "$tmp/security.log")"
}
step "the example drop-ins: traces (CAP_NET_RAW), STAMP on port 862 (CAP_NET_BIND_SERVICE)"
check_dropin trace-cap-net-raw.conf CAP_NET_RAW
check_dropin stamp-port-862.conf CAP_NET_BIND_SERVICE

step "installed binary as nobody"
relay_as_nobody "$bin"
step "installed relay and exporter, flags from /etc/default, free ports, as $user"
# shellcheck disable=SC1091
relay_args=$(. /etc/default/subsegment-relay && echo "$ARGS")
# shellcheck disable=SC1091
exporter_args=$(. /etc/default/subsegment-exporter && echo "$ARGS")
relay_port=$(free_port) relay_web=$(free_port) exporter_web=$(free_port)
relay_args=$(echo "$relay_args" | sed -e "s/--listen=:9000/--listen=127.0.0.1:$relay_port/" -e "s/--web.listen-address=:9718/--web.listen-address=127.0.0.1:$relay_web/")
exporter_args=$(echo "$exporter_args" | sed -e "s/--web.listen-address=:9717/--web.listen-address=127.0.0.1:$exporter_web/")
case "$relay_args $exporter_args" in *":90"*|*":97"*) fail "the defaults files' ports changed: update this test ($relay_args / $exporter_args)";; esac
# As the units run them: the package's user and group.
as_user="setpriv --reuid=$user --regid=$user --init-groups --no-new-privs"
# shellcheck disable=SC2086 # ARGS is a list of flags, as systemd splits it
$as_user $bin serve $relay_args --relay.name=z >"$tmp/r.log" 2>&1 &
relay_pid=$!
pids="$pids $relay_pid"
# shellcheck disable=SC2086
$as_user $bin serve $exporter_args --relay.name=a >"$tmp/e.log" 2>&1 &
exporter_pid=$!
pids="$pids $exporter_pid"
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
for pid in $relay_pid $exporter_pid; do
	[ "$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")" = "$(id -u "$user")" ] || fail "process $pid does not run as $user"
done
# A process of another user running the same binary is not the package's.
other_web=$(free_port)
setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs $bin serve --web.listen-address="127.0.0.1:$other_web" >"$tmp/o.log" 2>&1 &
other_pid=$!
pids="$pids $other_pid"
wait_http "http://127.0.0.1:$other_web/metrics"

# As an administrator enables a unit (the package does not): the link
# `dpkg --purge` must remove (postrm: deb-systemd-helper purge).
wants=/etc/systemd/system/multi-user.target.wants/subsegment-relay.service
dsh_state=/var/lib/systemd/deb-systemd-helper-enabled/subsegment-relay.service.dsh-also
systemctl enable subsegment-relay.service >"$tmp/enable.log" 2>&1 || fail "systemctl enable: $(cat "$tmp/enable.log")"
[ -L "$wants" ] || fail "systemctl enable made no $wants: $(cat "$tmp/enable.log")"
[ -f "$dsh_state" ] || fail "postinst recorded no deb-systemd-helper state ($dsh_state)"

step "dpkg --remove: prerm stops the package's running services"
dpkg --remove "$pkg" >"$tmp/dpkg.log" 2>&1 || fail "dpkg --remove: $(cat "$tmp/dpkg.log")"
for pid in $relay_pid $exporter_pid; do
	# A stopped child of this shell is a zombie until waited for.
	if kill -0 "$pid" 2>/dev/null && [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ]; then
		fail "process $pid of $user still runs after dpkg --remove"
	fi
	wait "$pid" 2>/dev/null || true
done
kill -0 "$other_pid" 2>/dev/null || fail "dpkg --remove stopped a process of another user"
kill "$other_pid"; wait "$other_pid" 2>/dev/null || true

step "dpkg --purge"
dpkg --purge "$pkg" >"$tmp/dpkg.log" 2>&1 || fail "dpkg --purge: $(cat "$tmp/dpkg.log")"
for path in /usr/bin/subsegment_exporter /etc/subsegment_exporter /etc/default/subsegment-relay /lib/systemd/system/subsegment-relay.service \
	"$wants" "$dsh_state"; do
	[ ! -e "$path" ] && [ ! -L "$path" ] || fail "$path is left after dpkg --purge"
done
step "ok"
