#!/usr/bin/env bash
# Side-by-side benchmarks, every contender started here on 127.0.0.1 and
# stopped by PID at the end. Figures go to stdout and bench/results/.
#
#   rtt      small-probe round trip through 3 relays + an echo end:
#            ours vs haproxy (mode tcp) vs socat; p50 and p99
#   stream   bytes/s of the stdin stream mode vs a socat chain
#   probe    CPU per /probe (1-relay chain) vs prometheus-blackbox-exporter
#            tcp probe, and 500 concurrent /probe against a 3-relay chain
#
# Usage: bench/run.sh [rtt|stream|probe ...]   (default: all)
# Env:   ROUNDS (10), RTT_N (2000), STREAM_MB (256), BENCH_BASE_PORT (29000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=$ROOT/subsegment_exporter
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
start() { "$@" >>"$WORK/procs.log" 2>&1 & PIDS+=($!); }

for tool in haproxy socat prometheus-blackbox-exporter; do
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
  start "$BIN" --listen 127.0.0.1:$((B+4)) --relay.name z --web.listen-address 127.0.0.1:$((B+104))
  start "$BIN" --listen 127.0.0.1:$((B+3)) --forward-to 127.0.0.1:$((B+4)) --relay.name d --web.listen-address 127.0.0.1:$((B+103))
  start "$BIN" --listen 127.0.0.1:$((B+2)) --forward-to 127.0.0.1:$((B+3)) --relay.name c --web.listen-address 127.0.0.1:$((B+102))
  start "$BIN" --listen 127.0.0.1:$((B+1)) --forward-to 127.0.0.1:$((B+2)) --relay.name b --web.listen-address 127.0.0.1:$((B+101))
  wait_port $((B+1))
}

plain_chains() { # haproxy (B+11..13) and socat (B+21..23, B+31..33 with -b 512), all ending at one echo (B+14)
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
  done
  wait_port $((B+11)); wait_port $((B+21)); wait_port $((B+31))
}

bench_rtt() {
  log "== rtt: small-probe round trip through 3 relays and an echo end, $ROUNDS alternating rounds of $RTT_N"
  for r in $(seq 1 "$ROUNDS"); do
    "$WORK/benchclient" -mode rtt -proto subsegment -target 127.0.0.1:$((B+1)) -n "$RTT_N" | sed 's/^/ours /' >>"$WORK/rtt"
    "$WORK/benchclient" -mode rtt -proto raw -size 64 -target 127.0.0.1:$((B+11)) -n "$RTT_N" | sed 's/^/haproxy /' >>"$WORK/rtt"
    "$WORK/benchclient" -mode rtt -proto raw -size 64 -target 127.0.0.1:$((B+21)) -n "$RTT_N" | sed 's/^/socat /' >>"$WORK/rtt"
  done
  for who in ours haproxy socat; do
    p50=$(grep "^$who " "$WORK/rtt" | sed 's/.*p50_us=\([0-9.]*\).*/\1/' | median)
    p99=$(grep "^$who " "$WORK/rtt" | sed 's/.*p99_us=\([0-9.]*\).*/\1/' | median)
    eval "${who}_p50=$p50; ${who}_p99=$p99"
    log "$(printf '  %-8s p50 %7.1f us   p99 %7.1f us   (median of %s rounds)' "$who" "$p50" "$p99" "$ROUNDS")"
  done
  log "$(awk -v a="$ours_p50" -v b="$haproxy_p50" -v c="$ours_p99" -v d="$haproxy_p99" 'BEGIN {printf "  ours/haproxy: p50 %.2fx, p99 %.2fx (target p50 <= 1.0x)", a/b, c/d}')"
}

bench_stream() {
  log "== stream: ${STREAM_MB} MiB through 3 relays and back, $ROUNDS rounds, MB/s (median)"
  head -c $((STREAM_MB << 20)) /dev/urandom >"$WORK/input"
  for r in $(seq 1 "$ROUNDS"); do
    for s in 512 8192 32768; do
      "$BIN" send -f 127.0.0.1:$((B+1)) -s $s --relay.name a <"$WORK/input" 2>"$WORK/send.err" >"$WORK/output" ||
        { echo "bench: send failed"; cat "$WORK/send.err"; exit 1; }
      cmp -s "$WORK/input" "$WORK/output" || { echo "bench: send output differs from its input"; exit 1; }
      echo "ours-$s $(head -1 "$WORK/send.err" | sed 's/.*s, \([0-9.]*\) MB\/s/\1/')" >>"$WORK/stream"
    done
    echo "socat-8192 $("$WORK/benchclient" -mode stream -target 127.0.0.1:$((B+21)) -input "$WORK/input" -block 8192 | sed 's/.*mbps=//')" >>"$WORK/stream"
    echo "socat-512 $("$WORK/benchclient" -mode stream -target 127.0.0.1:$((B+31)) -input "$WORK/input" -block 512 | sed 's/.*mbps=//')" >>"$WORK/stream"
  done
  for who in ours-512 socat-512 ours-8192 socat-8192 ours-32768; do
    v=$(grep "^$who " "$WORK/stream" | awk '{print $2}' | median)
    eval "$(echo "$who" | tr '-' '_')=$v"
    log "$(printf '  %-11s %7.1f MB/s' "$who" "$v")"
  done
  log "$(awk -v a="$ours_512" -v b="$socat_512" -v c="$ours_8192" -v d="$socat_8192" 'BEGIN {printf "  ours/socat: %.2fx at 512-byte blocks, %.2fx at 8192 (target >= 1.0x)", a/b, c/d}')"
}

# cpu_ticks PID: user+system CPU of a process, in clock ticks.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

bench_probe() {
  PROBE_N=${PROBE_N:-2000}
  printf '%s\n' 'modules:' \
    '  one: {probes: 1, interval: 1ms, timeout: 5s, targets: ["127.0.0.1:*"]}' \
    '  three: {probes: 3, interval: 1ms, timeout: 5s, targets: ["127.0.0.1:*"]}' >"$WORK/subsegment.yml"
  printf '%s\n' 'modules:' '  tcp_connect: {prober: tcp, timeout: 5s}' >"$WORK/blackbox.yml"
  "$BIN" --relay.name a --config.file "$WORK/subsegment.yml" --web.listen-address 127.0.0.1:$((B+200)) >>"$WORK/procs.log" 2>&1 &
  local ours=$!; PIDS+=($ours)
  prometheus-blackbox-exporter --config.file "$WORK/blackbox.yml" --web.listen-address 127.0.0.1:$((B+201)) >>"$WORK/procs.log" 2>&1 &
  local bb=$!; PIDS+=($bb)
  wait_port $((B+200)); wait_port $((B+201))
  local tick; tick=$(getconf CLK_TCK)
  log "== probe: CPU per /probe against a 1-relay chain (our end host at :$((B+4))), $PROBE_N sequential requests, $ROUNDS rounds (median)"
  for r in $(seq 1 "$ROUNDS"); do
    for who in bb one three; do
      case $who in
        bb) pid=$bb; url="http://127.0.0.1:$((B+201))/probe?module=tcp_connect&target=127.0.0.1:$((B+4))" ;;
        *) pid=$ours; url="http://127.0.0.1:$((B+200))/probe?module=$who&target=127.0.0.1:$((B+4))" ;;
      esac
      c0=$(cpu_ticks $pid)
      res=$("$WORK/benchclient" -mode http -target "$url" -n "$PROBE_N" -c 1)
      c1=$(cpu_ticks $pid)
      case "$res" in *"failed=0 "*) ;; *) echo "bench: /probe failures: $res"; exit 1 ;; esac
      echo "$who $(awk -v d=$((c1-c0)) -v n="$PROBE_N" -v hz="$tick" 'BEGIN {printf "%.1f", d/hz/n*1e6}')" >>"$WORK/probecpu"
    done
  done
  for who in bb one three; do
    v=$(grep "^$who " "$WORK/probecpu" | awk '{print $2}' | median)
    eval "cpu_$who=$v"
  done
  log "$(printf '  blackbox_exporter tcp probe:        %7.1f us CPU per /probe' "$cpu_bb")"
  log "$(printf '  ours, probes: 1 (after a warm-up):  %7.1f us CPU per /probe  (%.2fx blackbox)' "$cpu_one" "$(awk -v a="$cpu_one" -v b="$cpu_bb" 'BEGIN {print a/b}')")"
  log "$(printf '  ours, probes: 3 (after a warm-up):  %7.1f us CPU per /probe  (%.2fx blackbox)' "$cpu_three" "$(awk -v a="$cpu_three" -v b="$cpu_bb" 'BEGIN {print a/b}')")"
  log "  (target: <= 1.5x blackbox_exporter)"

  log "== probe: 500 concurrent /probe against the 3-relay chain (:$((B+1))), 10 waves of 5000"
  local relays=""
  for port in $((B+1)) $((B+2)) $((B+3)) $((B+4)); do
    relays="$relays $(pgrep -f -- "--listen 127.0.0.1:$port ")"
  done
  rss() { local s=0; for p in $relays; do s=$((s + $(rss_kb "$p"))); done; echo $s; }
  log "  relays' RSS before: $(rss) KiB"
  for wave in $(seq 1 10); do
    res=$("$WORK/benchclient" -mode http -target "http://127.0.0.1:$((B+200))/probe?module=three&target=127.0.0.1:$((B+1))" -n 5000 -c 500)
    log "  wave $wave: $res, relays' RSS $(rss) KiB"
    case "$res" in *"failed=0 "*) ;; *) echo "bench: concurrent /probe failures"; exit 1 ;; esac
  done
}

mkdir -p "$RESULTS"
log "subsegment_exporter benchmarks, $(date -u +%FT%TZ), $(nproc) CPUs, $("$BIN" --version 2>&1 | head -1)"
what=${*:-rtt stream probe}
ours_chain
plain_chains
for w in $what; do
  case $w in
    rtt) bench_rtt ;;
    stream) bench_stream ;;
    probe) bench_probe ;;
    *) echo "bench: unknown benchmark $w"; exit 1 ;;
  esac
done
log "results: $OUT"
