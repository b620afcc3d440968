#!/usr/bin/env bash
# Side-by-side benchmarks, every contender started here on 127.0.0.1 and
# stopped by PID at the end. Figures go to stdout and bench/results/.
#
#   rtt      small-probe round trip through 3 relays + an echo end:
#            ours vs haproxy (mode tcp) vs socat; p50 and p99, round
#            trips interleaved across the three chains
#   stream   bytes/s of the stdin stream mode vs a socat chain, unsigned
#            (large blocks spliced) and signed (copied)
#   http     CPU per /probe of an http module (HAProxy -> nginx) vs
#            prometheus-blackbox-exporter's http probe of the same URL
#   continuous  CPU per probe, spread and memory of 100, 2000 and 10000
#            continuous entries at 1 s (TCP and HTTP chains), and the
#            scrape of /metrics with and without classic buckets
#   continuous-instructions  instructions per continuous probe (callgrind)
#   continuous-floor  CPU per continuous TCP probe of a minimal C prober
#            (bench/cprobe) vs ours, alternating, at CONT_SIZES
#   contention  median wait of a relay and of a blocking C echo pinned
#            with 4 busy processes to one CPU
#   stamp    the STAMP reflector (--stamp.listen-address) vs a blocking C
#            reflector (bench/cstamp), both pinned to CPU 1, driven by
#            bench/cstamp/stampload on CPU 0: replies/s, reflector CPU per
#            packet, residence T3 - T2 p50/p99 at 10k, 50k, 100k and 400k pps
#   probe    CPU per /probe with the default module (1-relay chain) vs
#            prometheus-blackbox-exporter's tcp probe, at the same paced
#            rates, and 500 concurrent /probe against a 3-relay chain
#
# Usage: bench/run.sh [rtt|stream|probe|http|continuous|continuous-instructions|continuous-floor|contention|stamp ...]   (default: all)
# Env:   ROUNDS (10), RTT_N (2000), STREAM_MB (256), PROBE_N (200), BENCH_BASE_PORT (29000), BENCH_BIN (the binary),
#        CONT_SIZES ("100 2000 10000"), CONT_SECONDS (60), CONT_KINDS ("tcp http native"), CONT_CG_N (1000),
#        FLOOR_ROUNDS (2), FLOOR_SPLIT (1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${BENCH_BIN:-$ROOT/subsegment_exporter}
ROUNDS=${ROUNDS:-10}
RTT_N=${RTT_N:-2000}
STREAM_MB=${STREAM_MB:-256}
B=${BENCH_BASE_PORT:-29000}
WORK=$(mktemp -d /tmp/subsegment-bench.XXXXXX)
RESULTS=$ROOT/bench/results
mkdir -p "$RESULTS"
OUT=$RESULTS/$(date -u +%Y%m%dT%H%M%SZ).txt
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "$*" | tee -a "$OUT"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
start() { "$@" >>"$WORK/procs.log" 2>&1 & PIDS+=($!); }

for tool in haproxy socat prometheus-blackbox-exporter nginx; do
  command -v "$tool" >/dev/null || { echo "bench: $tool missing: run 'make bench-deps' (as root)"; exit 1; }
done
[ -x "$BIN" ] || { echo "bench: $BIN missing: run 'make build'"; exit 1; }
go build -o "$WORK/benchclient" ./bench/benchclient

# wait_port PORT: bounded wait until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 100); do
    (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: nothing listens on port $1 after 10s (see $WORK/procs.log)"; cat "$WORK/procs.log"; exit 1
}

# median of the numbers on stdin
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

ours_chain() { # ours: client -> b(B+1) -> c(B+2) -> d(B+3) -> z(B+4, echo end)
  start env ${RELAY_ENV:-X=1} "$BIN" --listen 127.0.0.1:$((B+4)) --relay.name z --relay.max-connections 4096 --web.listen-address 127.0.0.1:$((B+104))
  start env ${RELAY_ENV:-X=1} "$BIN" --listen 127.0.0.1:$((B+3)) --forward-to 127.0.0.1:$((B+4)) --relay.name d --web.listen-address 127.0.0.1:$((B+103))
  start env ${RELAY_ENV:-X=1} "$BIN" --listen 127.0.0.1:$((B+2)) --forward-to 127.0.0.1:$((B+3)) --relay.name c --web.listen-address 127.0.0.1:$((B+102))
  start env ${RELAY_ENV:-X=1} "$BIN" --listen 127.0.0.1:$((B+1)) --forward-to 127.0.0.1:$((B+2)) --relay.name b --web.listen-address 127.0.0.1:$((B+101))
  wait_port $((B+1))
}

signed_chain() { # ours with a shared key: client -> b(B+51) -> c -> d -> z(B+54)
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/key"
  local k=(--relay.auth-key-file "$WORK/key")
  start "$BIN" --listen 127.0.0.1:$((B+54)) --relay.name z "${k[@]}" --web.listen-address 127.0.0.1:$((B+154))
  start "$BIN" --listen 127.0.0.1:$((B+53)) --forward-to 127.0.0.1:$((B+54)) --relay.name d "${k[@]}" --web.listen-address 127.0.0.1:$((B+153))
  start "$BIN" --listen 127.0.0.1:$((B+52)) --forward-to 127.0.0.1:$((B+53)) --relay.name c "${k[@]}" --web.listen-address 127.0.0.1:$((B+152))
  start "$BIN" --listen 127.0.0.1:$((B+51)) --forward-to 127.0.0.1:$((B+52)) --relay.name b "${k[@]}" --web.listen-address 127.0.0.1:$((B+151))
  wait_port $((B+51))
}

plain_chains() { # haproxy (B+11..13) and socat (B+21..23; B+31..33 with -b 512; B+41..43 with -b 1048576), all ending at one echo (B+14)
  start "$WORK/benchclient" -mode echo -target 127.0.0.1:$((B+14))
  for i in 1 2 3; do
    next=$((B+11+i)); [ "$i" = 3 ] && next=$((B+14))
    cat >"$WORK/haproxy$i.cfg" <<EOF
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$((B+10+i))
  default_backend b
backend b
  server s1 127.0.0.1:$next
EOF
    start haproxy -f "$WORK/haproxy$i.cfg" -db
  done
  for i in 3 2 1; do
    next=$((B+21+i)); [ "$i" = 3 ] && next=$((B+14))
    start socat TCP-LISTEN:$((B+20+i)),bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:$next
    next=$((B+31+i)); [ "$i" = 3 ] && next=$((B+14))
    start socat -b 512 TCP-LISTEN:$((B+30+i)),bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:$next
    next=$((B+41+i)); [ "$i" = 3 ] && next=$((B+14))
    start socat -b 1048576 TCP-LISTEN:$((B+40+i)),bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:$next
  done
  wait_port $((B+11)); wait_port $((B+21)); wait_port $((B+31)); wait_port $((B+41))
}

bench_rtt() {
  RTT_RUN=$((${RTT_RUN:-0} + 1))
  log "== rtt run $RTT_RUN: small-probe round trip through 3 relays and an echo end, $ROUNDS rounds of $RTT_N, round trips interleaved across the chains (load $(loadavg))"
  : >"$WORK/rtt"
  for r in $(seq 1 "$ROUNDS"); do
    "$WORK/benchclient" -mode rtt -n "$RTT_N" -size 64 \
      -targets "ours=subsegment@127.0.0.1:$((B+1)),haproxy=raw@127.0.0.1:$((B+11)),socat=raw@127.0.0.1:$((B+21))" >>"$WORK/rtt"
  done
  for who in ours haproxy socat; do
    p50=$(grep "^$who " "$WORK/rtt" | sed 's/.* p50_us=\([0-9.]*\) .*/\1/' | median)
    p99=$(grep "^$who " "$WORK/rtt" | sed 's/.* p99_us=\([0-9.]*\) .*/\1/' | median)
    eval "${who}_p50=$p50; ${who}_p99=$p99"
    log "$(printf '  %-8s p50 %7.1f us   p99 %7.1f us   (median of %s rounds)' "$who" "$p50" "$p99" "$ROUNDS")"
  done
  # Per round, ours/haproxy from the same round (the same moments).
  log "  per round ours/haproxy p50: $(paste <(grep '^ours ' "$WORK/rtt") <(grep '^haproxy ' "$WORK/rtt") | sed 's/^ours p50_us=\([0-9.]*\) .*haproxy p50_us=\([0-9.]*\) .*/\1 \2/' | awk '{printf "%.2f ", $1/$2}')"
  log "$(awk -v a="$ours_p50" -v b="$haproxy_p50" -v c="$ours_p99" -v d="$haproxy_p99" -v n="$RTT_RUN" 'BEGIN {printf "  RUN %d ours/haproxy: p50 %.2fx %s, p99 %.2fx %s (targets: p50 <= 0.9x in 3 consecutive runs, p99 <= 1.0x)", n, a/b, (a/b <= 0.9 ? "met" : "NOT met"), c/d, (c/d <= 1.0 ? "met" : "NOT met")}')"
  log "  load after: $(loadavg)"
}

bench_stream() {
  log "== stream: ${STREAM_MB} MiB through 3 relays and back, $ROUNDS rounds, MB/s (median); ours unsigned (blocks of 1 MiB and more spliced) and signed (copied: the HMAC covers the data) (load $(loadavg))"
  head -c $((STREAM_MB << 20)) /dev/urandom >"$WORK/input"
  # Byte-exact once per block size and chain, untimed; the timed runs
  # then discard what comes back, as the socat client does (writing
  # 256 MiB to a file inside the timed run cost ours a third of its
  # figure at 1 MiB blocks).
  for s in 512 8192 32768 1048576; do
    "$BIN" send -f 127.0.0.1:$((B+1)) -s $s --relay.name a <"$WORK/input" 2>"$WORK/send.err" >"$WORK/output" ||
      { echo "bench: send failed"; cat "$WORK/send.err"; exit 1; }
    cmp -s "$WORK/input" "$WORK/output" || { echo "bench: send output differs from its input at $s-byte blocks"; exit 1; }
  done
  for s in 8192 1048576; do
    "$BIN" send -f 127.0.0.1:$((B+51)) -s $s --relay.name a --relay.auth-key-file "$WORK/key" <"$WORK/input" 2>"$WORK/send.err" >"$WORK/output" ||
      { echo "bench: signed send failed"; cat "$WORK/send.err"; exit 1; }
    cmp -s "$WORK/input" "$WORK/output" || { echo "bench: signed send output differs from its input at $s-byte blocks"; exit 1; }
  done
  rm -f "$WORK/output"
  : >"$WORK/stream"
  ours() { # ours NAME PORT BLOCK [flags]: one timed send
    local name=$1 port=$2 s=$3; shift 3
    "$BIN" send -f 127.0.0.1:"$port" -s "$s" --relay.name a "$@" <"$WORK/input" 2>"$WORK/send.err" >/dev/null ||
      { echo "bench: send failed"; cat "$WORK/send.err"; exit 1; }
    echo "$name $(head -1 "$WORK/send.err" | sed 's/.*s, \([0-9.]*\) MB\/s/\1/')" >>"$WORK/stream"
  }
  for r in $(seq 1 "$ROUNDS"); do
    for s in 512 8192 32768 1048576; do ours "ours-$s" $((B+1)) $s; done
    for s in 8192 1048576; do ours "signed-$s" $((B+51)) $s --relay.auth-key-file "$WORK/key"; done
    echo "socat-8192 $("$WORK/benchclient" -mode stream -target 127.0.0.1:$((B+21)) -input "$WORK/input" -block 8192 | sed 's/.*mbps=//')" >>"$WORK/stream"
    echo "socat-512 $("$WORK/benchclient" -mode stream -target 127.0.0.1:$((B+31)) -input "$WORK/input" -block 512 | sed 's/.*mbps=//')" >>"$WORK/stream"
    echo "socat-1048576 $("$WORK/benchclient" -mode stream -target 127.0.0.1:$((B+41)) -input "$WORK/input" -block 1048576 | sed 's/.*mbps=//')" >>"$WORK/stream"
  done
  for who in ours-512 socat-512 ours-8192 signed-8192 socat-8192 ours-32768 ours-1048576 signed-1048576 socat-1048576; do
    v=$(grep "^$who " "$WORK/stream" | awk '{print $2}' | median)
    eval "$(echo "$who" | tr '-' '_')=$v"
    log "$(printf '  %-15s %7.1f MB/s' "$who" "$v")"
  done
  log "$(awk -v a="$ours_512" -v b="$socat_512" 'BEGIN {printf "  ours/socat at 512-byte blocks: %.2fx", a/b}')"
  log "$(awk -v a="$ours_8192" -v b="$socat_8192" -v c="$signed_8192" 'BEGIN {printf "  ours/socat at 8 KiB: %.2fx %s (target >= 1.5x); signed %.2fx", a/b, (a/b >= 1.5 ? "met" : "NOT met"), c/b}')"
  log "$(awk -v a="$ours_1048576" -v b="$socat_1048576" -v c="$signed_1048576" 'BEGIN {printf "  ours/socat at 1 MiB: %.2fx %s (target >= 1.2x); signed %.2fx", a/b, (a/b >= 1.2 ? "met" : "NOT met"), c/b}')"
  log "  load after: $(loadavg)"
}

# cpu_us PID: CPU time of every thread of a process, in microseconds
# (schedstat's run time: exact, where /proc/PID/stat counts whole ticks).
cpu_us() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d\n", s / 1000}'; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

bench_probe() {
  PROBE_N=${PROBE_N:-200}
  # The module users run: every setting at its default (3 probes after a
  # warm-up, 50 ms apart), as blackbox_exporter's tcp module is.
  printf '%s\n' 'modules:' '  default: {targets: ["127.0.0.1:*"]}' >"$WORK/subsegment.yml"
  printf '%s\n' 'modules:' '  tcp_connect: {prober: tcp, timeout: 5s}' >"$WORK/blackbox.yml"
  "$BIN" --relay.name a --config.file "$WORK/subsegment.yml" --web.listen-address 127.0.0.1:$((B+200)) >>"$WORK/procs.log" 2>&1 &
  local ours=$!; PIDS+=($ours)
  prometheus-blackbox-exporter --config.file "$WORK/blackbox.yml" --web.listen-address 127.0.0.1:$((B+201)) >>"$WORK/procs.log" 2>&1 &
  local bb=$!; PIDS+=($bb)
  wait_port $((B+200)); wait_port $((B+201))
  # Both exporters get the same paced requests: one at a time, 10 a second
  # (each request finds the exporter idle, as a scrape does), and 100 a
  # second, up to 20 at a time (an exporter probing many targets).
  log "== probe: exporter CPU per /probe, default module, against a 1-relay chain (our end host at :$((B+4))); $PROBE_N requests per run (x5 at 100/s), $ROUNDS alternating rounds (median)"
  for r in $(seq 1 "$ROUNDS"); do
    for load in idle busy; do
      case $load in idle) args="-n $PROBE_N -c 1 -rate 10" ;; busy) args="-n $((PROBE_N * 5)) -c 20 -rate 100" ;; esac
      for conn in keepalive newconn; do
        nc=""; [ "$conn" = newconn ] && nc=-newconn
        for who in bb ours; do
          case $who in
            bb) pid=$bb; url="http://127.0.0.1:$((B+201))/probe?module=tcp_connect&target=127.0.0.1:$((B+4))" ;;
            ours) pid=$ours; url="http://127.0.0.1:$((B+200))/probe?target=127.0.0.1:$((B+4))" ;;
          esac
          c0=$(cpu_us $pid)
          # shellcheck disable=SC2086
          res=$("$WORK/benchclient" -mode http -target "$url" $args $nc)
          c1=$(cpu_us $pid)
          case "$res" in *"failed=0 "*) ;; *) echo "bench: /probe failures: $res"; exit 1 ;; esac
          n=$(echo "$res" | sed 's/ok=\([0-9]*\).*/\1/')
          echo "$load-$conn-$who $(( (c1 - c0) / n ))" >>"$WORK/probecpu"
        done
      done
    done
  done
  for load in idle busy; do
    for conn in keepalive newconn; do
      b=$(grep "^$load-$conn-bb " "$WORK/probecpu" | awk '{print $2}' | median)
      o=$(grep "^$load-$conn-ours " "$WORK/probecpu" | awk '{print $2}' | median)
      log "$(printf '  %-4s %-9s blackbox_exporter tcp %6.0f us   ours %6.0f us   ours/blackbox %.2fx' "$load" "$conn" "$b" "$o" "$(awk -v a="$o" -v b="$b" 'BEGIN {print a/b}')")"
    done
  done
  log "  (target: <= 1.0x; idle: 1 request at a time, 10/s; busy: 100/s, up to 20 at a time)"
  c0=$(cpu_us $ours); sleep 10; c1=$(cpu_us $ours)
  log "  idle exporter: $(( c1 - c0 )) us CPU in 10 s"

  log "== probe: 500 concurrent /probe (default module) against the 3-relay chain (:$((B+1))), 10 waves of 5000"
  local relays=""
  for port in $((B+1)) $((B+2)) $((B+3)) $((B+4)); do
    relays="$relays $(pgrep -f -- "--listen 127.0.0.1:$port ")"
  done
  rss() { local s=0; for p in $relays; do s=$((s + $(rss_kb "$p"))); done; echo $s; }
  log "  relays' RSS before: $(rss) KiB"
  for wave in $(seq 1 10); do
    res=$("$WORK/benchclient" -mode http -target "http://127.0.0.1:$((B+200))/probe?target=127.0.0.1:$((B+1))" -n 5000 -c 500)
    log "  wave $wave: $res, relays' RSS $(rss) KiB"
    case "$res" in *"failed=0 "*) ;; *) echo "bench: concurrent /probe failures"; exit 1 ;; esac
  done
}

bench_http() {
  PROBE_N=${PROBE_N:-200}
  # n1: nginx answering itself, stamping; h1: HAProxy in front, stamping.
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log stderr;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:$((B+302));
    location / { add_header Subsegment-Timing "n1;dur=\${request_time}s" always; return 200 "ok\n"; }
  }
}
EOF
  cat >"$WORK/haproxy-http.cfg" <<EOF
global
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$((B+301))
  http-request set-var(txn.subsegment_in) date(0,us)
  http-after-response add-header Subsegment-Timing "h1;dur=%[date(0,us),sub(txn.subsegment_in)]us"
  default_backend b
backend b
  server n1 127.0.0.1:$((B+302))
EOF
  start nginx -c "$WORK/nginx/nginx.conf" -e stderr
  start haproxy -f "$WORK/haproxy-http.cfg" -db
  printf '%s\n' 'modules:' '  web: {prober: http, targets: ["127.0.0.1:*"]}' >"$WORK/subsegment-http.yml"
  printf '%s\n' 'modules:' '  http_2xx: {prober: http, timeout: 5s}' >"$WORK/blackbox-http.yml"
  "$BIN" --relay.name a --config.file "$WORK/subsegment-http.yml" --web.listen-address 127.0.0.1:$((B+303)) >>"$WORK/procs.log" 2>&1 &
  local ours=$!; PIDS+=($ours)
  prometheus-blackbox-exporter --config.file "$WORK/blackbox-http.yml" --web.listen-address 127.0.0.1:$((B+304)) >>"$WORK/procs.log" 2>&1 &
  local bb=$!; PIDS+=($bb)
  wait_port $((B+301)); wait_port $((B+302)); wait_port $((B+303)); wait_port $((B+304))
  local url="http://127.0.0.1:$((B+301))/"
  log "== http: exporter CPU per /probe of $url (HAProxy h1 -> nginx n1), module defaults (ours: a warm-up and 3 requests 50 ms apart; blackbox: 1 request); $PROBE_N requests per run (x5 at 100/s), $ROUNDS rounds (median)"
  for r in $(seq 1 "$ROUNDS"); do
    for load in idle busy; do
      case $load in idle) args="-n $PROBE_N -c 1 -rate 10" ;; busy) args="-n $((PROBE_N * 5)) -c 20 -rate 100" ;; esac
      for who in bb ours; do
        case $who in
          bb) pid=$bb; purl="http://127.0.0.1:$((B+304))/probe?module=http_2xx&target=$url" ;;
          ours) pid=$ours; purl="http://127.0.0.1:$((B+303))/probe?module=web&target=$url" ;;
        esac
        c0=$(cpu_us $pid)
        # shellcheck disable=SC2086
        res=$("$WORK/benchclient" -mode http -target "$purl" $args)
        c1=$(cpu_us $pid)
        case "$res" in *"failed=0 "*) ;; *) echo "bench: http /probe failures: $res"; exit 1 ;; esac
        n=$(echo "$res" | sed 's/ok=\([0-9]*\).*/\1/')
        echo "$load-$who $(( (c1 - c0) / n ))" >>"$WORK/httpcpu"
      done
    done
  done
  for load in idle busy; do
    b=$(grep "^$load-bb " "$WORK/httpcpu" | awk '{print $2}' | median)
    o=$(grep "^$load-ours " "$WORK/httpcpu" | awk '{print $2}' | median)
    log "$(printf '  %-4s blackbox_exporter http %6.0f us   ours %6.0f us   ours/blackbox %.2fx' "$load" "$b" "$o" "$(awk -v a="$o" -v b="$b" 'BEGIN {print a/b}')")"
  done
  log "  (target: <= 1.0x)"
}

# continuous: CONT_SIZES entries at 1 s on one exporter with its defaults,
# for TCP chains (through our end host, started with --relay.max-connections
# above the entries: at the default 1024 the rest are refused, overloaded)
# and HTTP chains (through nginx stamping, one keep-alive connection each;
# HAProxy would need two descriptors per connection, over this machine's
# limit of 20 000). Exporter CPU per probe from schedstat (every thread,
# kernel included) over CONT_SECONDS after a warm-up, between two scrapes of
# /metrics that count the probes; the spread of the probes as the end host
# saw them, every 100 ms; RSS after the scrapes. Then the scrape of
# /metrics itself at the largest size, with and without classic buckets.
cont_config() { # cont_config tcp|http N PORT FILE
  {
    echo "modules:"
    for i in $(seq 0 $(($2 - 1))); do
      case $1 in
        tcp) echo "  m$i: {targets: [\"127.0.0.1:*\"], sla: {default: 5ms}}" ;;
        http) echo "  m$i: {prober: http, targets: [\"127.0.0.1:*\"], sla: {default: 5ms}}" ;;
      esac
    done
    echo "continuous:"
    for i in $(seq 0 $(($2 - 1))); do
      case $1 in
        tcp) echo "  - {target: \"127.0.0.1:$3\", module: m$i}" ;;
        http) echo "  - {target: \"http://127.0.0.1:$3/\", module: m$i}" ;;
      esac
    done
  } >"$4"
}

cont_nginx() { # cont_nginx PORT: nginx answering itself, stamping, with room for 10 000 connections
  mkdir -p "$WORK/cnginx"
  cat >"$WORK/cnginx/nginx.conf" <<EOC
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/cnginx/nginx.pid;
error_log stderr;
events { worker_connections 19000; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path $WORK/cnginx; proxy_temp_path $WORK/cnginx; fastcgi_temp_path $WORK/cnginx; uwsgi_temp_path $WORK/cnginx; scgi_temp_path $WORK/cnginx;
  server {
    listen 127.0.0.1:$1;
    location / { add_header Subsegment-Timing "n1;dur=\${request_time}s" always; return 200 "ok\n"; }
    location /nginx_status { stub_status; }
  }
}
EOC
  nginx -c "$WORK/cnginx/nginx.conf" -e stderr >>"$WORK/procs.log" 2>&1 &
  CONT_END=$!; PIDS+=($CONT_END)
  wait_port "$1"
}

# cont_probes URL: the continuous probes the exporter counted so far.
cont_probes() { curl -s "$1" | awk '/^subsegment_continuous_probes_total/ {s += $2} END {printf "%d\n", s}'; }

# cont_run tcp|http N [exporter flags...]: starts an end host and the
# exporter, measures, and leaves both running (cont_stop).
cont_run() {
  local kind=$1 n=$2; shift 2
  local end=$((B+410)) web=$((B+400)) warm=$(( n / 400 + 20 ))
  case $kind in
    tcp)
      "$BIN" --listen 127.0.0.1:$end --relay.name z --relay.max-connections $((n + 1000)) --web.listen-address 127.0.0.1:$((B+411)) >>"$WORK/procs.log" 2>&1 &
      CONT_END=$!; PIDS+=($CONT_END)
      wait_port $end
      CONT_COUNTER=(-target "http://127.0.0.1:$((B+411))/metrics" -metric subsegment_relay_frames_total) ;;
    http)
      cont_nginx $end
      CONT_COUNTER=(-target "http://127.0.0.1:$end/nginx_status" -metric nginx_stub_status) ;;
  esac
  cont_config "$kind" "$n" $end "$WORK/continuous.yml"
  "$BIN" --relay.name a --config.file "$WORK/continuous.yml" --web.listen-address 127.0.0.1:$web "$@" >>"$WORK/procs.log" 2>&1 &
  CONT_PID=$!; PIDS+=($CONT_PID)
  wait_port $web
  sleep "$warm"
  local url="http://127.0.0.1:$web/metrics" secs=${CONT_SECONDS:-60}
  local t0 p0 c0 tc0 c1 tc1 t1 p1 spread
  # The scrapes' own CPU is left out ([tc0, tc1] lies between them); the
  # probe rate is the one between the scrapes' starts, where they count.
  t0=$(date +%s.%N); p0=$(cont_probes "$url")
  c0=$(cpu_us $CONT_PID); tc0=$(date +%s.%N)
  # The spread sampler gives up when one read of the end host's counter
  # takes longer than its 100 ms tick (a loaded machine, 10 000
  # connections): the run then keeps its window, without a spread.
  if ! spread=$("$WORK/benchclient" -mode spread "${CONT_COUNTER[@]}" -duration "${secs}s"); then
    spread="max_over_mean=n/a max_100ms_over_mean=n/a"
    sleep "$(echo "$tc0 + $secs - $(date +%s.%N)" | bc | awk '{print ($1 > 0 ? $1 : 0)}')"
  fi
  c1=$(cpu_us $CONT_PID); tc1=$(date +%s.%N)
  t1=$(date +%s.%N); p1=$(cont_probes "$url")
  log "$(awk -v k="$kind" -v n="$n" -v c=$((c1 - c0)) -v w="$(echo "$tc1 - $tc0" | bc)" -v p=$((p1 - p0)) -v t="$(echo "$t1 - $t0" | bc)" \
    -v rss=$(( $(rss_kb $CONT_PID) / 1024 )) -v s="$spread" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" \
    'BEGIN {r = p / t; split(s, a, " "); for (i in a) {split(a[i], kv, "="); f[kv[1]] = kv[2]}
      printf "  %-4s %5d entries: %5.1f us per probe, %5.0f probes/s, %4.1f%% of a core, RSS %4d MiB, busiest second %sx the mean (busiest 100 ms %sx), load %s",
        k, n, c / (r * w), r, c / w / 1e4, rss, f["max_over_mean"], f["max_100ms_over_mean"], load}')"
}

cont_stop() {
  kill $CONT_PID $CONT_END 2>/dev/null || true
  wait $CONT_PID $CONT_END 2>/dev/null || true
}

# cont_scrape LABEL: the running exporter's /metrics as text, gzipped text
# and protobuf (what a Prometheus with native histograms asks for): time
# and bytes, median of 3.
cont_scrape() {
  local url="http://127.0.0.1:$((B+400))/metrics" f
  for f in text gzip protobuf; do
    for _ in 1 2 3; do
      case $f in
        text) curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "$url" || true ;;
        gzip) curl -s -o /dev/null -H 'Accept-Encoding: gzip' -w '%{time_total} %{size_download}\n' "$url" || true ;;
        protobuf) curl -s -o /dev/null -H 'Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited' -w '%{time_total} %{size_download}\n' "$url" || true ;;
      esac
    done >"$WORK/scrape.$f"
    kill -0 "$CONT_PID" 2>/dev/null || break
    log "$(printf '  /metrics, %-28s %-8s %6.2f s  %7.1f MB' "$1:" "$f" "$(awk '{print $1}' "$WORK/scrape.$f" | median)" "$(awk '{print $2 / 1e6}' "$WORK/scrape.$f" | median)")"
  done
  if ! kill -0 "$CONT_PID" 2>/dev/null; then
    log "  /metrics, $1: the exporter exited during these scrapes (killed? see dmesg, its cgroup's memory.oom_control)"
    return
  fi
  log "  ($(curl -s "$url" | grep -c '^subsegment_continuous_') continuous series in the text exposition; RSS $(( $(rss_kb $CONT_PID) / 1024 )) MiB after the scrapes, peak $(( $(awk '/VmHWM/ {print $2}' /proc/$CONT_PID/status) / 1024 )) MiB; load $(cut -d' ' -f1-3 /proc/loadavg))"
}

# cont_scrape_memory LABEL: the running exporter's memory and CPU while
# it is scraped as Prometheus scrapes it: CONT_SCRAPES text scrapes (8),
# one every CONT_SCRAPE_EVERY seconds (15); RSS sampled every 5 s.
cont_scrape_memory() {
  local url="http://127.0.0.1:$((B+400))/metrics" every=${CONT_SCRAPE_EVERY:-15} n=${CONT_SCRAPES:-8}
  local c0 t0 c1 t1 i next rss max=0 sum=0 k=0
  kill -0 "$CONT_PID" 2>/dev/null || return 0 # cont_scrape said why
  c0=$(cpu_us $CONT_PID); t0=$(date +%s.%N)
  for i in $(seq 1 "$n"); do
    next=$(echo "$(date +%s.%N) + $every" | bc)
    curl -s --max-time 120 -o /dev/null "$url" || true
    if ! kill -0 "$CONT_PID" 2>/dev/null; then
      log "  /metrics every $every s, $1: the exporter exited during scrape $i (killed? see dmesg, its cgroup's memory.oom_control)"
      return
    fi
    # Samples every 5 s from the scrape's end until the next is due (at
    # least one per scrape); the next starts on time.
    while :; do
      sleep "$(echo "$next - $(date +%s.%N)" | bc | awk '{print ($1 > 5 ? 5 : ($1 > 0 ? $1 : 0))}')"
      if ! kill -0 "$CONT_PID" 2>/dev/null; then
        log "  /metrics every $every s, $1: the exporter exited after scrape $i (killed? see dmesg, its cgroup's memory.oom_control)"
        return
      fi
      rss=$(rss_kb $CONT_PID); sum=$((sum + rss)); k=$((k + 1)); [ "$rss" -gt "$max" ] && max=$rss
      [ "$(echo "$(date +%s.%N) < $next" | bc)" = 1 ] || break
    done
  done
  c1=$(cpu_us $CONT_PID); t1=$(date +%s.%N)
  log "$(printf '  /metrics every %s s, %-28s RSS mean %4d MiB, max %4d MiB (sampled every 5 s), peak %4d MiB; exporter CPU %4.1f%% of a core, scrapes included; load %s' "$every" "$1:" $((sum / k / 1024)) $((max / 1024)) $(( $(awk '/VmHWM/ {print $2}' /proc/$CONT_PID/status) / 1024 )) "$(awk -v c=$((c1 - c0)) -v t="$(echo "$t1 - $t0" | bc)" 'BEGIN {print c / t / 1e4}')" "$(cut -d' ' -f1-3 /proc/loadavg)")"
}

bench_continuous() {
  local sizes=${CONT_SIZES:-100 2000 10000} kinds=" ${CONT_KINDS:-tcp http native} " kind n largest
  largest=$(echo "$sizes" | tr ' ' '\n' | sort -n | tail -1)
  log "== continuous: entries at 1 s on one exporter (its defaults); exporter CPU per probe from schedstat (kernel included) over ${CONT_SECONDS:-60} s; TCP: a chain to our end host each; HTTP: through nginx stamping (n1), a keep-alive connection each"
  for kind in tcp http; do
    [[ $kinds == *" $kind "* ]] || continue
    for n in $sizes; do
      cont_run $kind "$n"
      if [ "$kind" = tcp ] && [ "$n" = "$largest" ]; then
        cont_scrape "$n entries, classic+native"
        cont_scrape_memory "$n entries, classic+native"
      fi
      cont_stop
    done
  done
  if [[ $kinds == *" native "* ]]; then
    cont_run tcp "$largest" --no-continuous.classic-buckets
    cont_scrape "$largest entries, native only"
    cont_scrape_memory "$largest entries, native only"
    cont_stop
  fi
  log "  (targets, issue 23: <= 15 us per probe for TCP chains and <= 25 us for HTTP chains at 2000 and 10000 entries, flat from 100; RSS <= 1 GiB at 10000; no second over 2x the mean)"
}

# continuous-floor: what the continuous TCP probe's system calls and
# wake-ups cost a minimal C prober on this machine (bench/cprobe: one
# thread, one level-triggered epoll, per probe a 40-byte write, a
# getsockopt(TCP_INFO) and a recvmsg with SO_TIMESTAMPNS of the 168-byte
# reply, the exporter's batching rule) against bench/cprobe/cprobe_end,
# alternating per size with our exporter against our end host exactly as
# `continuous` runs it (cont_run tcp N). CPU per probe of the prober
# process from schedstat (kernel included) over CONT_SECONDS; FLOOR_ROUNDS
# rounds, median. FLOOR_SPLIT=1 adds cprobe with TCP_INFO off (-T), with
# TCP_INFO and stamps off (-T -S: a plain read), to show what each system
# call costs, and a what-if (-D): every system call, but the loop wakes for
# the slots only and takes the replies ready then (their kernel stamps say
# when they came), to show what the wake-ups for replies cost.
floor_count() { # floor_count PID FILE: cprobe's probes and turns so far ("P T")
  local before
  before=$(grep -c '^probes=' "$2" || true)
  kill -USR1 "$1"
  for _ in $(seq 1 100); do
    [ "$(grep -c '^probes=' "$2" || true)" -gt "$before" ] && break
    sleep 0.05
  done
  grep '^probes=' "$2" | tail -1 | sed 's/probes=\([0-9]*\).*turns=\([0-9]*\).*/\1 \2/'
}

floor_c() { # floor_c LABEL N [cprobe flags...]: logs cprobe's CPU per probe, sets FLOOR_US
  local label=$1 n=$2; shift 2
  local port=$((B+430)) secs=${CONT_SECONDS:-60} end p c0 c1 t0 t1 a b
  # Its own line, not just a listener on the port: another bench on the
  # same ports would answer instead.
  "$WORK/cprobe_end" $port >"$WORK/cprobe_end.out" 2>&1 &
  end=$!; PIDS+=("$end")
  for _ in $(seq 1 300); do grep -q listening "$WORK/cprobe_end.out" && break; kill -0 $end 2>/dev/null || break; sleep 0.1; done
  grep -q listening "$WORK/cprobe_end.out" || { echo "bench: cprobe_end did not start (BENCH_BASE_PORT clash?)"; cat "$WORK/cprobe_end.out"; exit 1; }
  "$WORK/cprobe" "$@" $port "$n" >"$WORK/cprobe.out" 2>&1 &
  p=$!; PIDS+=("$p")
  for _ in $(seq 1 300); do grep -q '^cprobe: .* connections' "$WORK/cprobe.out" && break; sleep 0.1; done
  grep -q '^cprobe: .* connections' "$WORK/cprobe.out" || { echo "bench: cprobe did not connect (see $WORK/cprobe.out)"; cat "$WORK/cprobe.out"; exit 1; }
  sleep 3
  c0=$(cpu_us $p); t0=$(date +%s.%N); a=$(floor_count $p "$WORK/cprobe.out")
  sleep "$secs"
  c1=$(cpu_us $p); t1=$(date +%s.%N); b=$(floor_count $p "$WORK/cprobe.out")
  kill $p $end 2>/dev/null || true
  wait $p $end 2>/dev/null || true
  FLOOR_US=$(awk -v c=$((c1 - c0)) -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.1f", c / (y[1] - x[1])}')
  log "$(awk -v l="$label" -v n="$n" -v c=$((c1 - c0)) -v a="$a" -v b="$b" -v t="$(echo "$t1 - $t0" | bc)" -v misses="$(grep '^probes=' "$WORK/cprobe.out" | tail -1 | sed 's/.*misses=\([0-9]*\).*/\1/')" -v load="$(loadavg)" \
    'BEGIN {split(a, x, " "); split(b, y, " "); p = y[1] - x[1]
      printf "  %-12s %5d entries: %5.1f us per probe, %5.0f probes/s, %4.2f turns per probe, %d missed, load %s", l, n, c / p, p / t, (y[2] - x[2]) / p, misses, load}')"
}

bench_continuous_floor() {
  command -v cc >/dev/null || { echo "bench: continuous-floor needs cc: run 'make bench-deps' (as root)"; exit 1; }
  cc -O2 -Wall -o "$WORK/cprobe" bench/cprobe/cprobe.c
  cc -O2 -Wall -o "$WORK/cprobe_end" bench/cprobe/cprobe_end.c
  local sizes=${CONT_SIZES:-100 2000 10000} rounds=${FLOOR_ROUNDS:-2} split=${FLOOR_SPLIT:-1} r n
  log "== continuous-floor: a minimal C prober (bench/cprobe: write, getsockopt(TCP_INFO), recvmsg with SO_TIMESTAMPNS per probe, one epoll) vs our exporter (as in continuous, TCP), entries at 1 s; prober CPU per probe from schedstat (kernel included) over ${CONT_SECONDS:-60} s; $rounds alternating rounds (median) (load $(loadavg))"
  : >"$WORK/floor"
  for r in $(seq 1 "$rounds"); do
    for n in $sizes; do
      floor_c "C" "$n"
      echo "c $n $FLOOR_US" >>"$WORK/floor"
      cont_run tcp "$n"
      cont_stop
      # cont_run's own line, just logged: its 4th field is the CPU per probe
      echo "ours $n $(tail -1 "$OUT" | awk '{print $4}')" >>"$WORK/floor"
      if [ "$split" = 1 ]; then
        floor_c "C -T" "$n" -T
        echo "c-notcpinfo $n $FLOOR_US" >>"$WORK/floor"
        floor_c "C -T -S" "$n" -T -S
        echo "c-plainread $n $FLOOR_US" >>"$WORK/floor"
        floor_c "C -D" "$n" -D
        echo "c-deferred $n $FLOOR_US" >>"$WORK/floor"
      fi
    done
  done
  fl() { awk -v k="$1" -v n="$2" '$1 == k && $2 == n {print $3}' "$WORK/floor" | median; }
  log "  entries   C us/probe   ours us/probe   ours/C$([ "$split" = 1 ] && echo '   C without TCP_INFO   C plain read, no TCP_INFO   C replies deferred')"
  for n in $sizes; do
    local c o
    c=$(fl c "$n"); o=$(fl ours "$n")
    log "$(printf '  %7d   %10.1f   %13.1f   %5.2fx' "$n" "$c" "$o" "$(awk -v a="$o" -v b="$c" 'BEGIN {print a / b}')")$([ "$split" = 1 ] && printf '   %18.1f   %25.1f   %18.1f' "$(fl c-notcpinfo "$n")" "$(fl c-plainread "$n")" "$(fl c-deferred "$n")")"
  done
  log "  (target, issue 23: ours <= 15 us per probe at 2000 and 10000 entries; load after: $(loadavg))"
}

# continuous-instructions: what a probe costs in instructions of the
# exporter's own code (user space, callgrind: repeatable on a busy
# machine): CONT_CG_N TCP entries at 1 s for 20 s, counted between two
# callgrind_control toggles.
bench_continuous_instructions() {
  command -v valgrind >/dev/null || { echo "bench: continuous-instructions needs valgrind: apt-get install valgrind"; exit 1; }
  local n=${CONT_CG_N:-1000} secs=20 end=$((B+420)) web=$((B+421)) a z f0 f1 ir
  "$BIN" --listen 127.0.0.1:$end --relay.name z --relay.max-connections $((n + 1000)) --web.listen-address 127.0.0.1:$((B+422)) >>"$WORK/procs.log" 2>&1 &
  z=$!; PIDS+=($z)
  wait_port $end
  cont_config tcp "$n" $end "$WORK/cg.yml"
  # Async preemption off: its signals upset callgrind.
  GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
    "$BIN" --relay.name a --config.file "$WORK/cg.yml" --web.listen-address 127.0.0.1:$web >>"$WORK/procs.log" 2>&1 &
  a=$!; PIDS+=($a)
  sleep 30
  frames() { curl -s "http://127.0.0.1:$((B+422))/metrics" | awk '/^subsegment_relay_frames_total/ {s += $2} END {printf "%d\n", s}'; }
  callgrind_control -i on $a >/dev/null
  f0=$(frames); sleep $secs; f1=$(frames)
  callgrind_control -i off $a >/dev/null
  callgrind_control -d $a >/dev/null
  sleep 1
  ir=$(cat "$WORK"/cg.out* | awk '/^(summary|totals):/ {s += $2} END {print s}')
  log "== continuous-instructions: $n TCP entries at 1 s under callgrind: $((f1 - f0)) probes in ${secs} s, $(awk -v i="$ir" -v p=$((f1 - f0)) 'BEGIN {printf "%.0f", i / p}') instructions per probe (the exporter's user space; load $(cut -d' ' -f1-3 /proc/loadavg))"
  kill $a $z 2>/dev/null || true
  wait $a $z 2>/dev/null || true
}

# contention: an end-of-chain relay and a plain blocking C echo (bench/cecho)
# pinned to one CPU that 4 busy stress-ng workers share; clients on the other
# CPU send small probes 5 ms apart. Each side's wait is the time from the
# kernel's receive stamp of a frame to the read: the relay's from the probe's
# JSON (its hop's median wait), cecho's from its own SO_TIMESTAMPNS reads.
bench_contention() {
  command -v stress-ng >/dev/null && command -v cc >/dev/null || { echo "bench: contention needs stress-ng and cc: run 'make bench-deps' (as root)"; exit 1; }
  cc -O2 -o "$WORK/cecho" bench/cecho/cecho.c
  # A self-signed certificate for 127.0.0.1: the TLS relay (its own CA).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2>/dev/null
  local n=${CONT_PROBES:-400} cpu=1 r engine
  start taskset -c $cpu stress-ng --cpu 4 --quiet
  local stress=$!
  log "== contention: median wait of a relay and of a C echo pinned to CPU $cpu with 4 busy stress-ng workers; $n probes 5 ms apart per round, $ROUNDS alternating rounds (median) (load $(loadavg))"
  for engine in epoll goroutines tls; do
    : >"$WORK/wait.$engine"
  done
  : >"$WORK/wait.cecho"
  for r in $(seq 1 "$ROUNDS"); do
    for engine in epoll goroutines tls; do
      local zflags=(--relay.engine "$engine") pflags=()
      if [ "$engine" = tls ]; then
        zflags=(--relay.tls-cert-file "$WORK/tls.pem" --relay.tls-key-file "$WORK/tls.key")
        pflags=(--relay.tls-ca-file "$WORK/tls.pem")
      fi
      taskset -c $cpu "$BIN" --listen 127.0.0.1:$((B+500)) --relay.name z "${zflags[@]}" --web.listen-address 127.0.0.1:$((B+501)) >>"$WORK/procs.log" 2>&1 &
      local z=$!; PIDS+=($z)
      wait_port $((B+500))
      taskset -c 0 "$BIN" probe --relay.name a "${pflags[@]}" --count "$n" --interval 5ms --output json 127.0.0.1:$((B+500)) >"$WORK/contention.json"
      python3 -c 'import json,sys; h=[h for h in json.load(open(sys.argv[1]))["hops"] if h["name"]=="z"][0]; print("%.1f" % (h["wait_seconds"]["median"]*1e6))' "$WORK/contention.json" >>"$WORK/wait.$engine"
      kill $z; wait $z 2>/dev/null || true
    done
    taskset -c $cpu "$WORK/cecho" $((B+502)) >"$WORK/cecho.out" 2>&1 &
    local ce=$!; PIDS+=($ce)
    wait_port $((B+502))
    taskset -c 0 "$WORK/benchclient" -mode rtt -proto raw -target 127.0.0.1:$((B+502)) -n "$n" -interval 5ms >/dev/null
    kill $ce; wait $ce 2>/dev/null || true
    awk '/wait median/ {print $6}' "$WORK/cecho.out" >>"$WORK/wait.cecho"
  done
  kill $stress 2>/dev/null || true
  local ce ep go tl
  ce=$(median <"$WORK/wait.cecho"); ep=$(median <"$WORK/wait.epoll"); go=$(median <"$WORK/wait.goroutines"); tl=$(median <"$WORK/wait.tls")
  log "$(printf '  cecho (C, blocking)      median wait %8.1f us' "$ce")"
  log "$(printf '  relay, epoll engine      median wait %8.1f us   %.2fx cecho' "$ep" "$(awk -v a="$ep" -v b="$ce" 'BEGIN {print a / b}')")"
  log "$(printf '  relay, goroutine engine  median wait %8.1f us   %.2fx cecho' "$go" "$(awk -v a="$go" -v b="$ce" 'BEGIN {print a / b}')")"
  log "$(printf '  relay, TLS (goroutines)  median wait %8.1f us   %.2fx cecho' "$tl" "$(awk -v a="$tl" -v b="$ce" 'BEGIN {print a / b}')")"
  log "  (target: the relay <= 1.3x cecho; load after: $(loadavg))"
}

# stamp: our reflector and bench/cstamp, each alone on CPU 1, driven in
# alternating rounds by stampload on CPU 0 at each offered rate for
# STAMP_SECONDS. CPU per packet is the reflector process's schedstat time
# (every thread, kernel included) over the replies it sent: 1e6 / that is
# what one core of this machine answers, whatever else shares the CPU.
bench_stamp() {
  command -v cc >/dev/null && command -v taskset >/dev/null || { echo "bench: stamp needs cc and taskset: run 'make bench-deps' (as root)"; exit 1; }
  cc -O2 -Wall -o "$WORK/cstamp" bench/cstamp/cstamp.c
  cc -O2 -Wall -pthread -o "$WORK/stampload" bench/cstamp/stampload.c
  local secs=${STAMP_SECONDS:-3} ours=$((B+600)) c=$((B+601)) r rate who pid port
  taskset -c 1 "$BIN" --relay.name s --stamp.listen-address 127.0.0.1:$ours --stamp.max-packets-per-second 10000000 \
    --web.listen-address 127.0.0.1:$((B+602)) >>"$WORK/procs.log" 2>&1 &
  local gp=$!; PIDS+=($gp)
  taskset -c 1 "$WORK/cstamp" $c >>"$WORK/procs.log" 2>&1 &
  local cp=$!; PIDS+=($cp)
  wait_port $((B+602)); sleep 0.5
  log "== stamp: STAMP reflector on CPU 1 (ours: --stamp.listen-address, stateful, unauthenticated; cstamp: blocking C), stampload on CPU 0 sending 44-octet packets for ${secs}s per run, $ROUNDS alternating rounds (median)"
  : >"$WORK/stamp"
  for r in $(seq 1 "$ROUNDS"); do
    for rate in 10000 50000 100000 400000; do
      for who in ours cstamp; do
        case $who in ours) pid=$gp; port=$ours ;; cstamp) pid=$cp; port=$c ;; esac
        c0=$(cpu_us $pid)
        res=$(taskset -c 0 "$WORK/stampload" $port $rate "$secs")
        c1=$(cpu_us $pid)
        n=$(echo "$res" | sed 's/.*received=\([0-9]*\).*/\1/')
        echo "$who-$rate $res cpu_ns=$(( (c1 - c0) * 1000 / (n > 0 ? n : 1) ))" >>"$WORK/stamp"
      done
    done
  done
  for rate in 10000 50000 100000 400000; do
    for who in ours cstamp; do
      f() { grep "^$who-$rate " "$WORK/stamp" | sed "s/.* $1=\([0-9.]*\).*/\1/" | median; }
      log "$(printf '  %-6s offered %6d/s: replies %8.0f/s, CPU %5.2f us/packet (%6.0f packets/s per core), residence p50 %8.1f us p99 %9.1f us' \
        "$who" "$rate" "$(f rx_pps)" "$(awk -v n="$(f cpu_ns)" 'BEGIN {print n / 1000}')" "$(awk -v n="$(f cpu_ns)" 'BEGIN {print (n > 0 ? 1e9 / n : 0)}')" "$(f residence_p50_us)" "$(f residence_p99_us)")"
    done
  done
  log "  (targets, issue 22/23: >= 100000 packets/s on one core with a kernel stamp per packet, residence p50 < 20 us)"
}

mkdir -p "$RESULTS"
log "subsegment_exporter benchmarks, $(date -u +%FT%TZ), $(nproc) CPUs, $("$BIN" --version 2>&1 | head -1)"
what=${*:-rtt stream probe http continuous contention stamp}
case " $what " in
  *" rtt "*|*" stream "*|*" probe "*) ours_chain; plain_chains ;;
esac
case " $what " in *" stream "*) signed_chain ;; esac
for w in $what; do
  case $w in
    rtt) bench_rtt ;;
    stream) bench_stream ;;
    probe) bench_probe ;;
    http) bench_http ;;
    continuous) bench_continuous ;;
    continuous-instructions) bench_continuous_instructions ;;
    continuous-floor) bench_continuous_floor ;;
    contention) bench_contention ;;
    stamp) bench_stamp ;;
    *) echo "bench: unknown benchmark $w"; exit 1 ;;
  esac
done
log "results: $OUT"
