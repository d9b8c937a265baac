#!/bin/bash
# A 3-node tcpcomm fleet on one machine, for trying the fleet out (docs/fleet.md):
# redis-server, three tcpcomm servers with --backplane, --proxy-protocol and
# --admin, and haproxy with contrib/haproxy/haproxy.cfg rendered for their
# ports, all on 127.0.0.1, with their logs, pid files and configs in FOLDER.
#
#   contrib/fleet/fleet.sh start FOLDER    start everything, wait until it serves
#   contrib/fleet/fleet.sh status FOLDER   which processes run (exit 1 if any does not)
#   contrib/fleet/fleet.sh stop FOLDER     stop each by its pid file
#
# Ports (environment, defaults as in the HAProxy sample): FRONT_PORT (9527,
# clients connect here), STATS_PORT (9540, HAProxy's status page),
# NODE_PORTS ("9531 9532 9533", the nodes' client ports), ADMIN_PORTS
# ("9541 9542 9543", their admin APIs), REDIS_PORT (6390). Programs: TWISTD
# (twistd), REDIS_SERVER (redis-server), REDIS_CLI (redis-cli), HAPROXY
# (haproxy), found on PATH unless set. WAIT (30): the longest start waits for
# any one thing, in seconds. CLIENT_NAMES ("agent-1 agent-2 agent-3"): the
# names clients may take; start writes each a token, FOLDER/NAME.token, and
# the nodes' --client-tokens file, FOLDER/tokens (behind a proxy, anyone could
# claim a name without them).
set -euo pipefail

[ $# -eq 2 ] || {
    echo "usage: $0 start|stop|status FOLDER" >&2
    exit 2
}
command=$1
mkdir -p "$2"
folder=$(cd "$2" && pwd)
# status and stop use the ports start was given.
if [ "$command" != start ] && [ -f "$folder/fleet.env" ]; then
    . "$folder/fleet.env"
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sample="$here/../haproxy/haproxy.cfg"

FRONT_PORT=${FRONT_PORT:-9527}
STATS_PORT=${STATS_PORT:-9540}
read -r -a node_ports <<< "${NODE_PORTS:-9531 9532 9533}"
read -r -a admin_ports <<< "${ADMIN_PORTS:-9541 9542 9543}"
REDIS_PORT=${REDIS_PORT:-6390}
TWISTD=${TWISTD:-twistd}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
WAIT=${WAIT:-30}
read -r -a client_names <<< "${CLIENT_NAMES:-agent-1 agent-2 agent-3}"
names=(node1 node2 node3)
for value in "$FRONT_PORT" "$STATS_PORT" "${node_ports[@]}" "${admin_ports[@]}" "$REDIS_PORT" "$WAIT"; do
    if ! [[ $value =~ ^[0-9]+$ ]]; then
        echo "$0: not a whole number (a port, or WAIT in seconds): '$value'" >&2
        exit 2
    fi
done
if [ ${#node_ports[@]} -ne 3 ] || [ ${#admin_ports[@]} -ne 3 ]; then
    echo "$0: NODE_PORTS and ADMIN_PORTS name three ports each, not '${node_ports[*]}' and '${admin_ports[*]}'" >&2
    exit 2
fi


# Is the process of this pid file alive?
running() {
    local pid
    [ -s "$folder/$1.pid" ] || return 1
    pid=$(cat "$folder/$1.pid")
    kill -0 "$pid" 2> /dev/null
}

# Start a command in the background, its output in FOLDER/NAME.log and its
# pid in FOLDER/NAME.pid. Each runs in the foreground of its own session
# (setsid), so that it outlives this script and the terminal.
launch() {
    local name=$1
    shift
    if running "$name"; then
        echo "$name already runs (pid $(cat "$folder/$name.pid"))" >&2
        exit 1
    fi
    (cd "$folder" && exec setsid "$@" > "$folder/$name.log" 2>&1 < /dev/null) &
    echo $! > "$folder/$name.pid"
}

# Wait (at most WAIT seconds) until the command succeeds; fail naming WHAT,
# with the end of NAME's log, if it does not or if NAME's process exits.
waitFor() {
    local name=$1 what=$2
    shift 2
    local deadline=$((SECONDS + WAIT))
    until "$@" > /dev/null 2>&1; do
        if ! running "$name" || [ $SECONDS -ge $deadline ]; then
            echo "$name: $what did not happen within $WAIT s; the end of $folder/$name.log:" >&2
            tail -n 20 "$folder/$name.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# The backend's servers that HAProxy's status page shows UP with their last
# check passed (status, check_status: the CSV's fields 18 and 37), one a line.
upServers() {
    curl -sf "http://127.0.0.1:$STATS_PORT/;csv" |
        awk -F, '$1 == "tcpcomm_nodes" && $18 == "UP" && $37 == "L7OK" { print $2 }'
}

allUp() {
    [ "$(upServers | wc -l)" -eq "${#names[@]}" ]
}

# A random token for each client name, in FOLDER/NAME.token (for the
# client's --token-file) and in FOLDER/tokens (the nodes' --client-tokens).
writeTokens() {
    local name token
    (
        umask 077
        : > "$folder/tokens"
        for name in "${client_names[@]}"; do
            token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
            echo "$token" > "$folder/$name.token"
            echo "$name $token" >> "$folder/tokens"
        done
    )
}

start() {
    local i
    cat > "$folder/fleet.env" << EOF
FRONT_PORT=$FRONT_PORT STATS_PORT=$STATS_PORT NODE_PORTS="${node_ports[*]}"
ADMIN_PORTS="${admin_ports[*]}" REDIS_PORT=$REDIS_PORT CLIENT_NAMES="${client_names[*]}"
EOF
    writeTokens
    launch redis "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$folder" \
        --save '' --appendonly no
    waitFor redis "redis-server answering on port $REDIS_PORT" \
        "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" ping
    for i in 0 1 2; do
        # --client-id hello: named clients, the ones any node reaches by name.
        launch "${names[i]}" "$TWISTD" --nodaemon --pidfile= tcpcomm server \
            --port "${node_ports[i]}" --interface 127.0.0.1 --proxy-protocol \
            --admin "tcp:${admin_ports[i]}:interface=127.0.0.1" --client-id hello \
            --client-tokens "$folder/tokens" --backplane "redis://127.0.0.1:$REDIS_PORT/0" --node-name "${names[i]}"
    done
    for i in 0 1 2; do
        waitFor "${names[i]}" "GET /healthz answering 200 on port ${admin_ports[i]}" \
            curl -sf "http://127.0.0.1:${admin_ports[i]}/healthz"
    done
    # The sample's ports replaced by these, as tests/haproxy.py does, and its
    # front bound to loopback.
    sed -E -e "s/bind :/bind 127.0.0.1:/" \
        -e "s/\b9527\b/$FRONT_PORT/g" -e "s/\b9540\b/$STATS_PORT/g" \
        -e "s/\b9531\b/${node_ports[0]}/g" -e "s/\b9532\b/${node_ports[1]}/g" \
        -e "s/\b9533\b/${node_ports[2]}/g" -e "s/\b9541\b/${admin_ports[0]}/g" \
        -e "s/\b9542\b/${admin_ports[1]}/g" -e "s/\b9543\b/${admin_ports[2]}/g" \
        "$sample" > "$folder/haproxy.cfg"
    "$HAPROXY" -c -q -f "$folder/haproxy.cfg"
    launch haproxy "$HAPROXY" -db -f "$folder/haproxy.cfg"
    waitFor haproxy "all three nodes UP on the status page (port $STATS_PORT)" allUp
    cat << EOF
fleet up in $folder
  clients:  127.0.0.1:$FRONT_PORT (HAProxy), e.g.
            $TWISTD -n --pidfile= tcpcomm client --port $FRONT_PORT \\
                --name ${client_names[0]} --token-file $folder/${client_names[0]}.token
  admin:    http://127.0.0.1:${admin_ports[0]} (node1), :${admin_ports[1]} (node2), :${admin_ports[2]} (node3)
  HAProxy:  http://127.0.0.1:$STATS_PORT/
  stop:     $0 stop $folder
EOF
}

# SIGTERM to each of NAMES by its pid file, then wait for them all; SIGKILL
# any still there after WAIT seconds. A pid file goes once its process has.
terminate() {
    local name pid deadline
    local -a pids=() files=()
    for name in "$@"; do
        [ -s "$folder/$name.pid" ] || continue
        pid=$(cat "$folder/$name.pid")
        files+=("$folder/$name.pid")
        if kill -TERM "$pid" 2> /dev/null; then
            pids+=("$pid")
            echo "stopping $name (pid $pid)"
        fi
    done
    deadline=$((SECONDS + WAIT))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2> /dev/null && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
        if kill -0 "$pid" 2> /dev/null; then
            echo "pid $pid still runs after $WAIT s: killing it" >&2
            kill -KILL "$pid" 2> /dev/null || true
        fi
    done
    rm -f "${files[@]}"
}

# HAProxy and the nodes together (each node takes its clients out of Redis
# as it stops), then Redis.
stop() {
    terminate haproxy node1 node2 node3
    terminate redis
}

status() {
    local name bad=0
    for name in redis node1 node2 node3 haproxy; do
        if running "$name"; then
            echo "$name: running (pid $(cat "$folder/$name.pid"))"
        else
            echo "$name: not running"
            bad=1
        fi
    done
    if running haproxy; then
        echo "HAProxy sees UP: $(upServers | tr '\n' ' ')"
    fi
    return $bad
}

case $command in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status FOLDER" >&2
        exit 2
        ;;
esac
