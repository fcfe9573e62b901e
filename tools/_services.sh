# Shared by tools/test: start the real services the tests use (tools/services/NAME) and check
# that each one started. Sourced, not run.
#
#   start_services DIR NAME...   start each service in the background, in DIR/NAME, its
#                                stderr in DIR/NAME.log
#   wait_services DIR NAME...    wait for them, print their logs, export what each one's
#                                DIR/NAME/env says; return 1, naming each service that did not
#                                start and why, when one did not
#   service_failure DIR NAME     why service NAME (started in DIR/NAME) did not start; nothing
#                                when it did
#
# A service script that cannot run here still exits 0, with FLECHE_TEST_*_SKIP=reason in its
# env file: the tests then know why it is missing. tools/test was asked to start it, so that
# is a failure of the run, not a reason to go on green without its tests.
SERVICES_SRC="${SERVICES_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services}"
_service_pids=()

start_services() {
    local dir="$1" svc
    shift
    for svc in "$@"; do
        mkdir -p "$dir/$svc"
        "$SERVICES_SRC/$svc" start "$dir/$svc" 2>"$dir/$svc.log" &
        _service_pids+=($!)
    done
}

service_failure() {
    local dir="$1" svc="$2"
    if [ ! -f "$dir/$svc/env" ]; then
        echo "tools/services/$svc wrote no env file (see its log above)"
        return 0
    fi
    # in a clean shell: a FLECHE_TEST_*_SKIP in our own environment says nothing about this run
    env -i bash -c 'source "$1" && for v in $(compgen -v FLECHE_TEST_); do
        case "$v" in *_SKIP) [ -n "${!v}" ] && echo "${!v}" ;; esac
    done' _ "$dir/$svc/env"
}

wait_services() {
    local dir="$1" svc pid why failed=()
    shift
    for pid in "${_service_pids[@]}"; do wait "$pid" || true; done
    _service_pids=()
    for svc in "$@"; do
        cat "$dir/$svc.log" >&2 2>/dev/null || true
        why="$(service_failure "$dir" "$svc")"
        if [ -n "$why" ]; then
            failed+=("$svc: $why")
        elif [ -f "$dir/$svc/env" ]; then
            # shellcheck disable=SC1090
            source "$dir/$svc/env"
        fi
    done
    [ "${#failed[@]}" = 0 ] && return 0
    echo "tools/test: asked to start these services, but they did not start:" >&2
    printf '    %s\n' "${failed[@]}" >&2
    echo "tools/test: fix that, or leave them out (their tests then skip, or fail when CI is set):" >&2
    echo "    FLECHE_TEST_SERVICES=\"<the others>\" ./tools/test    (or FLECHE_TEST_SERVICES=none)" >&2
    return 1
}
