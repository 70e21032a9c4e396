# shellcheck shell=bash
# scripts/lib/common.sh - helpers shared by the vmcluster shell scripts.
#
# Source it from a bash script:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
#
# Provides:
#   vmc_log MSG...        timestamped message on stderr ("[HH:MM:SS.mmm prog] MSG")
#   vmc_warn MSG...       same, prefixed with "warning:"
#   vmc_die MSG...        "error: MSG" on stderr, exit 1
#   vmc_need_root         die unless running as uid 0
#   vmc_need_cmd CMD...   die (pointing at scripts/install-deps) if a command is missing
#   vmc_now               seconds since the epoch, with nanoseconds (for timings)
#   vmc_since T0          seconds elapsed since T0 (from vmc_now), 2 decimals
#   VMC_REPO_ROOT         absolute path of the repository (parent of scripts/)
#   VMC_CACHE             ${VMCLUSTER_CACHE:-/var/cache/vmcluster}
#   VMC_PROG              basename of the running script (used in log lines)
#
# Everything here writes to stderr only: scripts keep stdout for their result.

# Guard against double sourcing.
if [[ -n "${_VMC_COMMON_SH:-}" ]]; then return 0; fi
_VMC_COMMON_SH=1

VMC_PROG=${VMC_PROG:-$(basename -- "$0")}

vmc_log() {
    local ts
    # printf %(...)T has no sub-second field; take milliseconds from date.
    ts=$(date +%H:%M:%S.%3N)
    printf '[%s %s] %s\n' "$ts" "$VMC_PROG" "$*" >&2
}

vmc_warn() { vmc_log "warning: $*"; }

vmc_die() {
    vmc_log "error: $*"
    exit 1
}

vmc_need_root() {
    [[ $(id -u) -eq 0 ]] || vmc_die "must run as root (uid 0); got uid $(id -u)"
}

vmc_need_cmd() {
    local c missing=()
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    if ((${#missing[@]})); then
        vmc_die "missing command(s): ${missing[*]} (run scripts/install-deps)"
    fi
}

vmc_now() { date +%s.%N; }

vmc_since() { awk -v t0="$1" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.2f", t1 - t0 }'; }

# Repository root: the parent of the directory holding this file's parent
# (scripts/lib/common.sh -> scripts/ -> repo). Works wherever the caller is run from.
# shellcheck disable=SC2034  # used by the scripts that source this file
VMC_REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck disable=SC2034
VMC_CACHE=${VMCLUSTER_CACHE:-/var/cache/vmcluster}

# Make sure the rust toolchain installed by rustup is reachable even when the
# caller's PATH lacks it (these machines keep it in /root/.cargo/bin).
vmc_cargo_path() {
    local d dirs=()
    [[ -n "${CARGO_HOME:-}" ]] && dirs+=("$CARGO_HOME/bin")
    dirs+=("${HOME:-/root}/.cargo/bin" /root/.cargo/bin)
    for d in "${dirs[@]}"; do
        if [[ -x "$d/cargo" ]]; then printf '%s\n' "$d"; return 0; fi
    done
    return 1
}
