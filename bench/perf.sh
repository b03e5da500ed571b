#!/usr/bin/env bash
# bench/perf.sh: end-to-end performance of the proxy over real loopback
# sockets, every figure next to the ceiling of its listener stack.
#
#   bash bench/perf.sh                  # 10 s per point, about 3 minutes
#   PERF_SECONDS=3 bash bench/perf.sh   # quick run
#
# Points (64 connections, K = events per request):
#   ceiling    cmd/ceiling: the proxy's fasthttp settings, a handler that only
#              reads the body and answers 202. K = 1, 10, 100.
#   bare       cmd/ceiling -bare: fasthttp with its default settings, the same
#              handler. K = 1 only.
#   accept     the proxy with a buffer and batches so large, and a flush
#              interval so long, that nothing is flushed during the run (file
#              sink); restarted per point so the buffer starts empty.
#   queue      K = 1: the accept path's settings with QUEUE_URL, a nats-server
#              (JetStream, file store in the work directory) started for the
#              point on a free loopback port, on the loadgen core like
#              fakebird. BUFFER_SIZE=1 parks the bridge after its first fetch
#              (FLUSH_INTERVAL=1h keeps that one event), so the proxy only
#              publishes: the queue's counterpart of the accept path. Skipped,
#              with a note, without nats-server (PATH, /usr/sbin, or
#              PERF_NATS_SERVER).
#   sustained  the proxy with default batching (100,000 rows or 1 s, gzip)
#              shipping to cmd/fakebird -no-validate in proxy-token mode; after
#              the run the proxy is stopped (SIGTERM drains it) and the rows
#              fakebird received are compared with the events acknowledged.
#   latency    the accept path at K = 1, paced at half its max req/s of the
#              same run; latency is measured from each request's scheduled
#              send time. The ceiling paced at the same rate follows, as a
#              reference for what the machine itself adds to the tail, then
#              the sustained proxy at the same rate (its batches going out as
#              it accepts). Runs once per PERF_RUNS repetition.
#   RSS        the accept path after 1,000,000 events (K = 100, 10,000
#              requests): VmRSS against the NDJSON bytes acknowledged.
#
# For each K the ceiling, accept and sustained points run back to back (at
# K = 1 with the bare ceiling and the queue point), so a ratio compares runs
# close in time. The server under test runs on core 0 and
# loadgen on core 1 (taskset). fakebird runs on core 1 too: the upstream is
# not part of the system under test, and on core 0 its decompression took
# about a sixth of the proxy's core at K = 100.
#
# Environment: PERF_SECONDS (default 10), PERF_CONNS (64), PERF_WARMUP (1s),
# PERF_RUNS (1): how many times the throughput and latency points run; with
# more than one the report gives each ratio's median, lowest and highest.
# PERF_KEEP=1 keeps the work directory (binaries, logs, loadgen JSON).
# PERF_NATS_SERVER: the nats-server binary for the queue point.
# PERF_UPSTREAM_ENCODING: the sustained proxy's UPSTREAM_ENCODING (default
# gzip, the proxy's default; zstd to measure it).
#
# The report ends with one summary table, issue #18's targets: queue mode
# >= 0.6x the accept path (K = 1); the accept path >= 0.85x bare fasthttp
# (K = 1); sustained >= 0.4x the ceiling at K = 100 with every acknowledged
# row delivered; the sustained p99 at half the accept path's max rate
# <= 1.5x the ceiling's p99 at that rate. With PERF_RUNS > 1 each is the
# median of the runs' ratios [lowest-highest], judged on the median.
#
# Needs go, curl; taskset if available; nats-server for the queue point.
# Binds only 127.0.0.1 (the proxy listens on PORT=0, a free port, on every
# interface: it has no host setting).
set -euo pipefail

SECS=${PERF_SECONDS:-10}
CONNS=${PERF_CONNS:-64}
WARMUP=${PERF_WARMUP:-1s}
RUNS=${PERF_RUNS:-1}
KS=(1 10 100)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tbproxy-perf.XXXXXX")
PIDS=()

log() { printf '%s\n' "$*" >&2; }
die() {
	log "perf.sh: $*"
	exit 1
}

cleanup() {
	local p
	for p in ${PIDS[@]+"${PIDS[@]}"}; do
		kill -9 "$p" 2>/dev/null || true
	done
	for p in ${PIDS[@]+"${PIDS[@]}"}; do
		wait "$p" 2>/dev/null || true
	done
	if [[ ${PERF_KEEP:-} == 1 ]]; then
		log "perf.sh: work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v go >/dev/null || die "go not found"
command -v curl >/dev/null || die "curl not found"
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 ]] || die "PERF_SECONDS must be a positive whole number of seconds, got '$SECS'"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -gt 0 ]] || die "PERF_RUNS must be a positive whole number, got '$RUNS'"

NPROC=$(nproc)
SRV=() LG=() PINNING="server on core 0, loadgen on core 1 (taskset)"
if ! command -v taskset >/dev/null; then
	log "perf.sh: taskset not found: running unpinned"
	PINNING="unpinned (taskset not found)"
elif ((NPROC < 2)); then
	log "perf.sh: only $NPROC CPU: running unpinned"
	PINNING="unpinned (1 CPU)"
else
	SRV=(taskset -c 0) LG=(taskset -c 1)
fi

NATS=${PERF_NATS_SERVER:-$(command -v nats-server || true)}
[[ -z $NATS && -x /usr/sbin/nats-server ]] && NATS=/usr/sbin/nats-server
QUEUE_SKIP=
if [[ -z $NATS || ! -x $NATS ]]; then
	QUEUE_SKIP="skipped: nats-server not found (apt-get install nats-server, or set PERF_NATS_SERVER)"
	log "perf.sh: queue point $QUEUE_SKIP"
fi

# ---- helpers ---------------------------------------------------------------

# start LOGFILE CMD...: run CMD in the background; sets PID.
start() {
	local out=$1
	shift
	: >"$out" # exists before the background job opens it, for wait_port
	"$@" >"$out" 2>&1 &
	PID=$!
	PIDS+=("$PID")
}

# stop PID [SIGNAL]: signal (default KILL) and reap; sets RC to its exit status.
stop() {
	local pid=$1 sig=${2:-KILL} i
	kill "-$sig" "$pid" 2>/dev/null || true
	if [[ $sig != KILL ]]; then
		for ((i = 0; i < 450; i++)); do # SHUTDOWN_TIMEOUT is 30s
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
	fi
	RC=0
	wait "$pid" 2>/dev/null || RC=$?
	local keep=() p
	for p in ${PIDS[@]+"${PIDS[@]}"}; do
		[[ $p == "$pid" ]] || keep+=("$p")
	done
	PIDS=(${keep[@]+"${keep[@]}"})
}

# wait_port PID LOGFILE SEDEXPR: wait for the "listening" line; sets PORT.
wait_port() {
	local pid=$1 out=$2 expr=$3 i
	PORT=
	for ((i = 0; i < 100; i++)); do
		PORT=$(sed -n "$expr" "$out" 2>/dev/null | head -n1 || true)
		[[ -n $PORT ]] && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	log "perf.sh: server did not start; its output:"
	cat "$out" >&2
	exit 1
}

# start_proxy NAME ENV...: start the proxy with a free port; sets PID, PORT.
start_proxy() {
	local name=$1
	shift
	start "$WORK/$name.log" env PORT=0 LOG_LEVEL=info "$@" ${SRV[@]+"${SRV[@]}"} "$WORK/tbproxy"
	wait_port "$PID" "$WORK/$name.log" 's/.*"msg":"listening","addr":"[^"]*:\([0-9][0-9]*\)".*/\1/p'
	curl -fsS -o /dev/null --retry 20 --retry-connrefused --retry-delay 0 "http://127.0.0.1:$PORT/health" ||
		die "proxy $name does not answer /health"
}

# REQUEST_MEMORY_BYTES: with BUFFER_SIZE this large, one request of
# MAX_BODY_BYTES may need ~261 MiB while it is read and split, above the
# 128 MiB default, and the configuration would be refused.
ACCEPT_ENV=(BUFFER_SIZE=100000000 BUFFER_MAX_BYTES=8GiB MAX_BODY_BYTES=10MiB
	REQUEST_MEMORY_BYTES=512MiB BATCH_SIZE=100000000 BATCH_MAX_BYTES=1GiB FLUSH_INTERVAL=1h)

# The queue point: the accept path's settings, but a one-event buffer, so the
# bridge (which fetches while the buffer is under half full) parks after its
# first fetch and the proxy only publishes; FLUSH_INTERVAL=1h keeps it full.
QUEUE_ENV=(BUFFER_SIZE=1 BUFFER_MAX_BYTES=10MiB MAX_BODY_BYTES=10MiB
	BATCH_SIZE=100000000 BATCH_MAX_BYTES=1GiB FLUSH_INTERVAL=1h QUEUE_MAX_BYTES=8GiB)

# start_accept NAME: the accept-path proxy with an empty file sink.
start_accept() {
	mkdir -p "$WORK/sink-$1"
	start_proxy "$1" "${ACCEPT_ENV[@]}" "TINYBIRD_BASE_URL=file://$WORK/sink-$1"
}

# loadgen NAME ARGS...: run loadgen on the loadgen core; JSON in $WORK/NAME.json.
loadgen() {
	local name=$1
	shift
	if ! ${LG[@]+"${LG[@]}"} "$WORK/loadgen" -conns "$CONNS" -warmup "$WARMUP" -json "$@" \
		>"$WORK/$name.json" 2>"$WORK/$name.txt"; then
		cat "$WORK/$name.txt" >&2
		die "loadgen $name failed"
	fi
	sed -n '2,5p' "$WORK/$name.txt" | sed "s/^/  [$name]/" >&2
}

# j NAME KEY: a number from loadgen's JSON.
j() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" "$WORK/$1.json"; }

# answers NAME: "202×N" plus every other status, from loadgen's JSON.
answers() {
	sed -n 's/.*"status":{\([^}]*\)}.*/\1/p' "$WORK/$1.json" |
		tr ',' '\n' | tr -d '"' | while IFS=: read -r code count; do
		printf '%s%s×%s' "${sep:-}" "$code" "$(n "$count")"
		sep=", "
	done
	local bad
	bad=$(j "$1" bad_body)
	[[ ${bad:-0} == 0 ]] || printf ', **%s 2xx with a wrong body**' "$bad"
}

# non2xx NAME: how many measured requests did not get a good 2xx.
non2xx() { awk -v r="$(j "$1" requests)" -v o="$(j "$1" ok_requests)" 'BEGIN { print r - o }'; }

# check_log NAME: sets LOGNOTE to a note about ERROR/WARN lines in a proxy
# log and records them as problems.
check_log() {
	local e w
	e=$(grep -c '"level":"ERROR"' "$WORK/$1.log" || true)
	w=$(grep -c '"level":"WARN"' "$WORK/$1.log" || true)
	LOGNOTE=
	if ((e + w > 0)); then
		LOGNOTE="; **log: $e ERROR, $w WARN**"
		PROBLEMS+=("$1: $e ERROR and $w WARN log lines, e.g. $(grep -m1 -E '"level":"(ERROR|WARN)"' "$WORK/$1.log" | cut -c1-300)")
	fi
}

# cpu_note PID [NAME]: sets CPUNOTE to the process's CPU time and page faults
# so far; with NAME (a loadgen run, warm-up included) also CPU_US, its CPU
# time per request in µs. Unlike req/s, CPU per request hardly depends on how
# much of its core other processes took, so it is the steadier comparison on
# a shared machine.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_note() {
	CPU_US=$(awk -v hz="$CLK_TCK" -v r="$([[ -z ${2:-} ]] || j "$2" all_requests)" \
		'{ if (r > 0) printf "%.1f", ($14 + $15) / hz / r * 1e6 }' "/proc/$1/stat" 2>/dev/null || true)
	CPUNOTE=$(awk -v hz="$CLK_TCK" -v us="$CPU_US" '{ printf "CPU %.1f s user + %.1f s sys%s, %.0fk page faults", $14 / hz, $15 / hz, us == "" ? "" : " (" us " µs per request)", $10 / 1000 }' "/proc/$1/stat" 2>/dev/null || true)
}

# metric PORT NAME: one value from the proxy's /metrics.
metric() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { printf "%.0f", $2 }'; }

n() {
	LC_ALL=C awk -v x="$1" 'BEGIN {
		s = sprintf("%.0f", x); out = ""
		while (length(s) > 3 && substr(s, length(s) - 3, 1) ~ /[0-9]/) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
		print s out }'
}
f() { LC_ALL=C awk -v x="$1" -v p="${2:-2}" 'BEGIN { printf "%.*f", p, x }'; }
ratio() { LC_ALL=C awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

ROWS=()
PROBLEMS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 | $6 | $7 | $8 |"); }

# start_nats NAME: a nats-server with JetStream, its file store in the work
# directory, on a free loopback port, on the loadgen core (like fakebird,
# NATS is not the system under test); sets NATS_PID, NATS_PORT. A config
# file rather than -js -sd: max_payload must exceed MAX_BODY_BYTES (see
# docs/replicas.md), or the proxy warns at start.
start_nats() {
	local dir=$WORK/$1 i
	mkdir -p "$dir/js"
	cat >"$dir/nats.conf" <<-EOF
		listen: 127.0.0.1:-1
		max_payload: 12MB
		jetstream {
		  store_dir: "$dir/js"
		  max_memory_store: 64MB
		  max_file_store: 16GB
		}
	EOF
	start "$dir/nats.log" ${LG[@]+"${LG[@]}"} "$NATS" -c "$dir/nats.conf"
	NATS_PID=$PID
	wait_port "$PID" "$dir/nats.log" 's/.*Listening for client connections on .*:\([0-9][0-9]*\)$/\1/p'
	NATS_PORT=$PORT
	for ((i = 0; i < 100; i++)); do
		grep -q 'Server is ready' "$dir/nats.log" && return 0
		sleep 0.1
	done
	cat "$dir/nats.log" >&2
	die "nats-server did not get ready"
}

# ---- build -----------------------------------------------------------------

START=$(date +%s)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
log "perf.sh: building into $WORK"
(cd "$ROOT" && go build -o "$WORK/" . ./cmd/loadgen ./cmd/ceiling ./cmd/fakebird)
[[ -x $WORK/tbproxy ]] || die "build did not produce $WORK/tbproxy"
LGARGS=(-duration "${SECS}s")

# ---- throughput: ceiling, accept path, queue, sustained, per K --------------
# The points of one K run back to back, so each ratio compares runs close in
# time on a machine whose load may change.

declare -A CEIL_RPS CEIL_US ACC_RPS ACC_US RATIOS VALS
SUF='' RUNLABEL='' # set per repetition when PERF_RUNS > 1
BARE_RPS='' BARE_US=''

# keep KEY VALUE: one run's figure, for the summary at the end.
keep() { VALS[$1]+=" $2"; }

# median VALUES...: the median of numbers (the lower middle one for an even count).
median() { printf '%s\n' "$@" | LC_ALL=C sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# start_ceiling NAME [-bare]: sets PID, PORT.
start_ceiling() {
	local name=$1
	shift
	start "$WORK/$name.log" ${SRV[@]+"${SRV[@]}"} "$WORK/ceiling" -addr 127.0.0.1:0 "$@"
	wait_port "$PID" "$WORK/$name.log" 's/^ceiling: listening on .*:\([0-9][0-9]*\)$/\1/p'
}

run_ceiling() {
	local k=$1
	log "perf.sh: ceiling, K=$k"
	start_ceiling "ceiling-$k$SUF"
	loadgen "ceiling-$k$SUF" -url "http://127.0.0.1:$PORT" -events "$k" "${LGARGS[@]}"
	cpu_note "$PID" "ceiling-$k$SUF"
	stop "$PID"
	CEIL_RPS[$k]=$(j "ceiling-$k$SUF" req_per_s)
	CEIL_US[$k]=$CPU_US
	keep "ceiling-$k" "${CEIL_RPS[$k]}"
	keep "ceiling-$k-us" "$CPU_US"
	row "ceiling$RUNLABEL" "$k" "$(n "${CEIL_RPS[$k]}")" "$(n "$(j "ceiling-$k$SUF" events_per_s)")" 1.00 \
		"$(f "$(j "ceiling-$k$SUF" p50_ms)")" "$(f "$(j "ceiling-$k$SUF" p99_ms)")" "$(answers "ceiling-$k$SUF"); server ${CPUNOTE%%,*}"
}

# run_bare: cmd/ceiling -bare (fasthttp's default settings) at K = 1.
run_bare() {
	local name=bare-1$SUF
	log "perf.sh: bare fasthttp ceiling, K=1"
	start_ceiling "$name" -bare
	loadgen "$name" -url "http://127.0.0.1:$PORT" -events 1 "${LGARGS[@]}"
	cpu_note "$PID" "$name"
	stop "$PID"
	BARE_RPS=$(j "$name" req_per_s)
	BARE_US=$CPU_US
	keep bare-1 "$BARE_RPS"
	keep bare-1-us "$CPU_US"
	row "bare fasthttp (default settings)$RUNLABEL" 1 "$(n "$BARE_RPS")" "$(n "$(j "$name" events_per_s)")" \
		"$(ratio "$BARE_RPS" "${CEIL_RPS[1]}")" "$(f "$(j "$name" p50_ms)")" "$(f "$(j "$name" p99_ms)")" \
		"$(answers "$name"); \`ceiling -bare\`: fasthttp.Server{Handler} as it comes, the same handler; server ${CPUNOTE%%,*}"
	[[ $(non2xx "$name") == 0 ]] || PROBLEMS+=("bare ceiling: non-2xx answers: $(answers "$name")")
}

run_accept() {
	local k=$1 held acked note bare=
	log "perf.sh: accept path, K=$k"
	start_accept "accept-$k$SUF"
	loadgen "accept-$k$SUF" -url "http://127.0.0.1:$PORT" -events "$k" "${LGARGS[@]}"
	ACC_RPS[$k]=$(j "accept-$k$SUF" req_per_s)
	RATIOS[accept-$k]+=" $(ratio "${ACC_RPS[$k]}" "${CEIL_RPS[$k]}")"
	if ((k == 1)); then
		RATIOS[accept-bare]+=" $(ratio "${ACC_RPS[1]}" "$BARE_RPS")"
		keep accept-1 "${ACC_RPS[1]}"
		keep accept-1-p99 "$(j "accept-1$SUF" p99_ms)"
		bare="**$(ratio "${ACC_RPS[1]}" "$BARE_RPS")× the bare fasthttp ceiling**; "
	fi
	held=$(metric "$PORT" tbproxy_buffer_events)
	cpu_note "$PID" "accept-$k$SUF"
	ACC_US[$k]=$CPU_US
	if ((k == 1)); then
		keep accept-1-us "$CPU_US"
		RATIOS[cpu-accept-bare]+=" $(ratio "$BARE_US" "$CPU_US")"
		RATIOS[cpu-accept-1]+=" $(ratio "${CEIL_US[1]}" "$CPU_US")"
	fi
	stop "$PID" # SIGKILL: nothing is to be delivered, and the sink would get GBs
	check_log "accept-$k$SUF"
	acked=$(j "accept-$k$SUF" all_events)
	note="$(answers "accept-$k$SUF"); holds $(n "$held") of $(n "$acked") acked events; proxy $CPUNOTE"
	if [[ $held != "$acked" ]]; then
		note="**$note**"
		PROBLEMS+=("accept K=$k: the buffer holds $held events but $acked were acknowledged")
	fi
	row "accept path$RUNLABEL" "$k" "$(n "${ACC_RPS[$k]}")" "$(n "$(j "accept-$k$SUF" events_per_s)")" \
		"**$(ratio "${ACC_RPS[$k]}" "${CEIL_RPS[$k]}")**" \
		"$(f "$(j "accept-$k$SUF" p50_ms)")" "$(f "$(j "accept-$k$SUF" p99_ms)")" "$bare$note$LOGNOTE"
	[[ $(non2xx "accept-$k$SUF") == 0 ]] || PROBLEMS+=("accept K=$k: non-2xx answers: $(answers "accept-$k$SUF")")
}

# run_queue: the proxy publishing to JetStream at K = 1 (QUEUE_ENV), right
# after the accept path it is compared with.
run_queue() {
	local name=queue-1$SUF rps p99 acked accepted fetched natscpu note
	if [[ -n $QUEUE_SKIP ]]; then
		[[ -n $SUF ]] || row "queue (JetStream)" 1 — — — — — "$QUEUE_SKIP"
		return
	fi
	log "perf.sh: queue (JetStream), K=1"
	start_nats "nats-$name"
	mkdir -p "$WORK/sink-$name"
	start_proxy "$name" "${QUEUE_ENV[@]}" "TINYBIRD_BASE_URL=file://$WORK/sink-$name" \
		"QUEUE_URL=nats://127.0.0.1:$NATS_PORT"
	loadgen "$name" -url "http://127.0.0.1:$PORT" -events 1 "${LGARGS[@]}"
	rps=$(j "$name" req_per_s)
	p99=$(j "$name" p99_ms)
	accepted=$(metric "$PORT" tbproxy_events_accepted_total)
	fetched=$(metric "$PORT" tbproxy_queue_fetched_messages_total)
	cpu_note "$NATS_PID" "$name"
	natscpu=$CPUNOTE
	keep queue-1-nats-us "$CPU_US"
	cpu_note "$PID" "$name"
	keep queue-1-us "$CPU_US"
	RATIOS[cpu-queue]+=" $(ratio "${ACC_US[1]}" "$CPU_US")"
	stop "$PID"
	stop "$NATS_PID"
	check_log "$name"
	RATIOS[queue]+=" $(ratio "$rps" "${ACC_RPS[1]}")"
	RATIOS[queue-p99]+=" $(ratio "$p99" "$(j "accept-1$SUF" p99_ms)")"
	keep queue-1 "$rps"
	keep queue-1-p99 "$p99"
	acked=$(j "$name" all_events)
	note="$(answers "$name"); published $(n "$accepted") of $(n "$acked") acked events; the bridge fetched $(n "$fetched") messages, then parked; proxy $CPUNOTE; nats-server ${natscpu%%,*}"
	if [[ $accepted != "$acked" ]]; then
		note="**$note**"
		PROBLEMS+=("queue: the proxy counted $accepted events accepted (published) but $acked were acknowledged")
	fi
	row "queue (JetStream, publish only)$RUNLABEL" 1 "$(n "$rps")" "$(n "$(j "$name" events_per_s)")" \
		"$(ratio "$rps" "${CEIL_RPS[1]}")" "$(f "$(j "$name" p50_ms)")" "$(f "$p99")" \
		"**$(ratio "$rps" "${ACC_RPS[1]}")× the accept path**; $note$LOGNOTE"
	[[ $(non2xx "$name") == 0 ]] || PROBLEMS+=("queue: non-2xx answers: $(answers "$name")")
}

# start_sustained NAME: fakebird (on the loadgen core: the upstream is not
# part of the system under test) and a proxy with default batching shipping
# to it; sets PID and PORT (the proxy's), FB_PID and FB_PORT.
start_sustained() {
	local name=$1
	start "$WORK/fakebird-$name.log" ${LG[@]+"${LG[@]}"} "$WORK/fakebird" -addr 127.0.0.1:0 -no-validate -tokens tb_perf_upstream
	FB_PID=$PID
	wait_port "$PID" "$WORK/fakebird-$name.log" 's/^fakebird: listening on .*:\([0-9][0-9]*\) .*/\1/p'
	FB_PORT=$PORT
	start_proxy "$name" TINYBIRD_TOKEN=tb_perf_upstream AUTHORIZATION_TOKEN=tb_perf_client \
		"TINYBIRD_BASE_URL=http://127.0.0.1:$FB_PORT" "UPSTREAM_ENCODING=${PERF_UPSTREAM_ENCODING:-gzip}"
}

# stop_sustained NAME: SIGTERM the proxy (it drains to fakebird), then check
# that fakebird has every acknowledged row; sets NOTE, DELIVERED (1 when
# every acknowledged row arrived and the drain exited 0; else 0, and PROBLEMS).
stop_sustained() {
	local name=$1 drain_rc rows acked stats reqs
	stop "$PID" TERM
	drain_rc=$RC
	check_log "$name"
	stats=$(curl -fsS "http://127.0.0.1:$FB_PORT/stats")
	rows=$(sed -n 's/.*"rows":\([0-9]*\).*/\1/p' <<<"$stats")
	reqs=$(sed -n 's/.*"requests":\([0-9]*\).*/\1/p' <<<"$stats")
	stop "$FB_PID" TERM
	acked=$(j "$name" all_events)
	# loadgen spreads requests over 4 datasources (its default), for the run
	# and its warm-up; FLUSH_INTERVAL is 1 s.
	NOTE="upstream got $(n "$rows") rows of $(n "$acked") acked in $(n "$reqs") requests ($(f "$(LC_ALL=C awk -v r="$reqs" -v s="$SECS" -v w="${WARMUP%s}" 'BEGIN { print r / 4 / (s + w) }')" 1) per datasource per second); drain exit $drain_rc"
	DELIVERED=1
	if [[ $rows != "$acked" || $drain_rc != 0 ]]; then
		DELIVERED=0
		NOTE="**$NOTE**"
		PROBLEMS+=("$name: fakebird received $rows rows for $acked acknowledged events; proxy exit status $drain_rc after SIGTERM")
	fi
	[[ $(non2xx "$name") == 0 ]] || PROBLEMS+=("$name: non-2xx answers: $(answers "$name")")
}

run_sustained() {
	local k=$1 rps
	log "perf.sh: sustained, K=$k"
	start_sustained "sustained-$k$SUF"
	loadgen "sustained-$k$SUF" -url "http://127.0.0.1:$PORT" -events "$k" -token tb_perf_client "${LGARGS[@]}"
	cpu_note "$FB_PID"
	local fbcpu=$CPUNOTE
	cpu_note "$PID" "sustained-$k$SUF"
	RATIOS[cpu-sustained-$k]+=" $(ratio "${CEIL_US[$k]}" "$CPU_US")"
	keep "sustained-$k-us" "$CPU_US"
	stop_sustained "sustained-$k$SUF"
	rps=$(j "sustained-$k$SUF" req_per_s)
	RATIOS[sustained-$k]+=" $(ratio "$rps" "${CEIL_RPS[$k]}")"
	keep "sustained-$k" "$rps"
	keep "sustained-$k-delivered" "$DELIVERED"
	row "sustained$RUNLABEL" "$k" "$(n "$rps")" "$(n "$(j "sustained-$k$SUF" events_per_s)")" "**$(ratio "$rps" "${CEIL_RPS[$k]}")**" \
		"$(f "$(j "sustained-$k$SUF" p50_ms)")" "$(f "$(j "sustained-$k$SUF" p99_ms)")" \
		"$(answers "sustained-$k$SUF"); $NOTE; proxy $CPUNOTE; fakebird ${fbcpu%%,*}$LOGNOTE"
}

# ---- latency at half the max rate -----------------------------------------
# The ceiling at the same rate, right after, shows how much of the tail is
# the machine's (other processes, scheduling) rather than the proxy's.

# latency_row NAME LABEL
latency_row() {
	local late
	late=$(j "$1" late_unsent)
	row "$2" 1 "$(n "$(j "$1" req_per_s)")" "$(n "$(j "$1" events_per_s)")" — \
		"$(f "$(j "$1" p50_ms)")" "**$(f "$(j "$1" p99_ms)")**" \
		"p99.9 $(f "$(j "$1" p999_ms)") ms, max $(f "$(j "$1" max_ms)") ms, from scheduled send; $(answers "$1")${late:+; $(n "$late") scheduled requests not sent by the end (behind schedule)}${3:-}"
}

# run_latency: the accept path, the ceiling and the sustained proxy, paced
# at half this run's accept-path K = 1 rate.
run_latency() {
	local rate cp sp
	rate=$(LC_ALL=C awk -v r="${ACC_RPS[1]:-0}" 'BEGIN { printf "%.0f", r / 2 }')
	if ((rate <= 0)); then
		PROBLEMS+=("latency$RUNLABEL: skipped, the accept path acknowledged nothing at K = 1")
		return
	fi
	log "perf.sh: latency, accept path and ceiling at $rate req/s"
	start_accept "latency$SUF"
	loadgen "latency$SUF" -url "http://127.0.0.1:$PORT" -events 1 -rate "$rate" "${LGARGS[@]}"
	stop "$PID"
	check_log "latency$SUF"
	latency_row "latency$SUF" "latency$RUNLABEL: accept path paced at $(n "$rate") req/s (½ its max)" "$LOGNOTE"
	start_ceiling "latency-ceiling$SUF"
	loadgen "latency-ceiling$SUF" -url "http://127.0.0.1:$PORT" -events 1 -rate "$rate" "${LGARGS[@]}"
	stop "$PID"
	latency_row "latency-ceiling$SUF" "latency reference$RUNLABEL: ceiling at the same rate"
	log "perf.sh: latency, sustained at $rate req/s"
	start_sustained "latency-sustained$SUF"
	loadgen "latency-sustained$SUF" -url "http://127.0.0.1:$PORT" -events 1 -rate "$rate" -token tb_perf_client "${LGARGS[@]}"
	stop_sustained "latency-sustained$SUF"
	cp=$(j "latency-ceiling$SUF" p99_ms)
	sp=$(j "latency-sustained$SUF" p99_ms)
	RATIOS[latency]+=" $(ratio "$sp" "$cp")"
	keep latency-rate "$rate"
	keep latency-ceiling-p99 "$cp"
	keep latency-sustained-p99 "$sp"
	latency_row "latency-sustained$SUF" "latency$RUNLABEL: sustained (batches going out every second) at the same rate" \
		"; **p99 $(ratio "$sp" "$cp")× the ceiling's**; $NOTE$LOGNOTE"
}

for ((r = 1; r <= RUNS; r++)); do
	if ((RUNS > 1)); then
		SUF=-r$r RUNLABEL=" (run $r)"
		((r == 1)) && SUF=
	fi
	for k in "${KS[@]}"; do
		run_ceiling "$k"
		((k == 1)) && run_bare
		run_accept "$k"
		((k == 1)) && run_queue
		run_sustained "$k"
	done
	run_latency
done

# ---- RSS after 1,000,000 events --------------------------------------------

log "perf.sh: RSS, accept path, 1,000,000 events"
start_accept rss
rss0=$(awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$PID/status")
loadgen rss -url "http://127.0.0.1:$PORT" -events 100 -requests 10000 -warmup 0
rss=$(awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$PID/status")
hwm=$(awk '/^VmHWM:/ { print $2 * 1024 }' "/proc/$PID/status")
bbytes=$(metric "$PORT" tbproxy_buffer_bytes)
bevents=$(metric "$PORT" tbproxy_buffer_events)
stop "$PID"
check_log rss
sent=$(j rss all_bytes)
mib() { LC_ALL=C awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }
row "RSS: accept path after $(n "$(j rss all_events)") events" 100 "$(n "$(j rss req_per_s)")" "$(n "$(j rss events_per_s)")" — \
	"$(f "$(j rss p50_ms)")" "$(f "$(j rss p99_ms)")" \
	"VmRSS $(mib "$rss") = **$(ratio "$rss" "$sent")×** the $(mib "$sent") of NDJSON sent ($(ratio "$((rss - rss0))" "$sent")× above the idle $(mib "$rss0")); peak $(mib "$hwm"); tbproxy_buffer_bytes $(n "$bbytes") ($(n "$bevents") events); $(answers rss)$LOGNOTE"

# ---- report ----------------------------------------------------------------

CPU=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
cat <<EOF

## tbproxy performance, $DATE

Machine: ${NPROC} CPUs, ${CPU:-unknown CPU}; $(go version | cut -d' ' -f3-); kernel $(uname -r); load average at start $LOADAVG.
Setup: $CONNS connections, ${SECS} s per point after a $WARMUP warm-up, $RUNS run(s) of the throughput and latency points, ~$(j accept-1 event_bytes) B events; $PINNING; fakebird, the upstream of the sustained points, and nats-server, the queue point's, run on the loadgen core.
req/s and events/s count acknowledged (2xx) requests only; "× ceiling" is proxy / ceiling (the one with the proxy's settings) at the same K, for req/s and events/s alike. Latency in ms.
The accept path keeps every event in memory, so at large K it also measures how fast the kernel hands out fresh pages (see its page faults and sys time; on some VMs first touch of memory is several times slower than reuse); the sustained points recycle their memory.

| Point | K | req/s | events/s | × ceiling | p50 | p99 | Answers, notes |
|---|---|---|---|---|---|---|---|
EOF
printf '%s\n' "${ROWS[@]}"
echo
if ((RUNS > 1)); then
	echo "Over the $RUNS runs (each ratio against the ceiling of its own run):"
	echo
	echo "| Point | K | median × ceiling | lowest | highest |"
	echo "|---|---|---|---|---|"
	for point in accept sustained; do
		for k in "${KS[@]}"; do
			# shellcheck disable=SC2086 # word splitting of the list is intended
			set -- ${RATIOS[$point-$k]}
			echo "| $point | $k | **$(median "$@")** | $(printf '%s\n' "$@" | LC_ALL=C sort -g | head -n1) | $(printf '%s\n' "$@" | LC_ALL=C sort -g | tail -n1) |"
		done
	done
	echo
	echo "Each run's latency points were paced at half that run's accept-path K = 1 rate."
	echo
fi
if ((${#PROBLEMS[@]} > 0)); then
	echo "Problems seen:"
	printf -- '- %s\n' "${PROBLEMS[@]}"
else
	echo "No problems seen: every request got its 2xx with the right row count, the accept-path buffers held every acknowledged event, the sustained runs delivered every acknowledged row and drained with exit 0, and the proxy logged no ERROR or WARN."
fi
echo

# ---- summary: issue #18's targets ------------------------------------------

# spread LIST: "**median×**", and " [lowest–highest]" over several runs.
spread() {
	# shellcheck disable=SC2086 # word splitting of the list is intended
	set -- $1
	(($# > 0)) || {
		echo "n/a"
		return
	}
	printf '**%s×**' "$(median "$@")"
	(($# == 1)) || printf ' [%s–%s]' "$(printf '%s\n' "$@" | LC_ALL=C sort -g | head -n1)" "$(printf '%s\n' "$@" | LC_ALL=C sort -g | tail -n1)"
}
# med KEY: the median of one figure kept over the runs.
# shellcheck disable=SC2086 # word splitting of the list is intended
med() { median ${VALS[$1]:-}; }
# met LIST OP TARGET [EXTRA]: ✅ when the median of LIST satisfies OP
# (>= or <=) TARGET and EXTRA (default 1) is 1, else ❌.
met() {
	# shellcheck disable=SC2086 # word splitting of the list is intended
	LC_ALL=C awk -v m="$(median $1)" -v op="$2" -v t="$3" -v x="${4:-1}" \
		'BEGIN { ok = (op == ">=") ? m + 0 >= t : m + 0 <= t; print (ok && x == 1) ? "✅" : "❌" }'
}

OF=
((RUNS == 1)) || OF=" (medians of $RUNS runs [lowest–highest]; absolute figures are each one's median; met is judged on the median)"
echo "### Issue #18 targets$OF"
echo
echo "| target | what | measured | target | met |"
echo "|---|---|---|---|---|"
if [[ -n $QUEUE_SKIP ]]; then
	echo "| 1 | queue mode (JetStream), K = 1: req/s ÷ the in-memory accept path's | $QUEUE_SKIP | ≥ 0.6× | — |"
else
	echo "| 1 | queue mode (JetStream, publish only), K = 1, $CONNS connections: req/s ÷ the in-memory accept path's | $(spread "${RATIOS[queue]}"): $(n "$(med queue-1)") vs $(n "$(med accept-1)") req/s; p99 $(f "$(med queue-1-p99)") vs $(f "$(med accept-1-p99)") ms ($(spread "${RATIOS[queue-p99]}" | tr -d '*')); by CPU per request, $(spread "${RATIOS[cpu-queue]}" | tr -d '*') ($(med queue-1-us) vs $(med accept-1-us) µs in the proxy, plus $(med queue-1-nats-us) µs in nats-server) | ≥ 0.6× | $(met "${RATIOS[queue]}" '>=' 0.6) |"
fi
echo "| 2 | accept path, K = 1: req/s ÷ bare fasthttp (\`ceiling -bare\`, default settings) | $(spread "${RATIOS[accept-bare]}"): $(n "$(med accept-1)") vs $(n "$(med bare-1)") req/s; by CPU per request, $(spread "${RATIOS[cpu-accept-bare]}" | tr -d '*') ($(med accept-1-us) vs $(med bare-1-us) µs) | ≥ 0.85× | $(met "${RATIOS[accept-bare]}" '>=' 0.85) |"
echo "| 2, informative | accept path, K = 1: req/s ÷ the ceiling with the proxy's fasthttp settings | $(spread "${RATIOS[accept-1]}"): $(n "$(med accept-1)") vs $(n "$(med ceiling-1)") req/s; by CPU per request, $(spread "${RATIOS[cpu-accept-1]}" | tr -d '*') ($(med accept-1-us) vs $(med ceiling-1-us) µs) | (≥ 0.85×, informative) | — |"
# shellcheck disable=SC2086 # word splitting of the list is intended
DELIV=$(printf '%s\n' ${VALS[sustained-100-delivered]:-} | awk '{ s += $1 } END { print s + 0 }')
ALLDELIV=0
((DELIV == RUNS)) && ALLDELIV=1
echo "| 3 | sustained, K = 100: req/s ÷ the ceiling's at K = 100, every acknowledged row delivered | $(spread "${RATIOS[sustained-100]}"): $(n "$(med sustained-100)") vs $(n "$(med ceiling-100)") req/s ($(n "$(LC_ALL=C awk -v r="$(med sustained-100)" 'BEGIN { print r * 100 }')") events/s); by CPU per request, $(spread "${RATIOS[cpu-sustained-100]}" | tr -d '*') ($(med sustained-100-us) vs $(med ceiling-100-us) µs); every row delivered in $DELIV of $RUNS runs | ≥ 0.4×, all delivered | $(met "${RATIOS[sustained-100]}" '>=' 0.4 "$ALLDELIV") |"
if [[ -n ${RATIOS[latency]:-} ]]; then
	echo "| 4 | flushing does not stall accepting: p99 of the sustained proxy at half the accept path's K = 1 max ÷ the ceiling's p99 at that rate | $(spread "${RATIOS[latency]}"): $(f "$(med latency-sustained-p99)") vs $(f "$(med latency-ceiling-p99)") ms at $(n "$(med latency-rate)") req/s | ≤ 1.5× | $(met "${RATIOS[latency]}" '<=' 1.5) |"
else
	echo "| 4 | flushing does not stall accepting: sustained p99 ÷ ceiling p99 at half the max rate | not measured (see the problems above) | ≤ 1.5× | — |"
fi
echo
echo "\"By CPU per request\" (informative, not judged) inverts the ratio of the servers' CPU time per request (warm-up included; for the queue the proxy's alone): the req/s ratio if each had its core to itself. Other processes on the machine move it far less than req/s."
echo
echo "Took $(($(date +%s) - START)) s."
