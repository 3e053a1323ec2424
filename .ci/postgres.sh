#!/usr/bin/env bash
# Make the PostgreSQL server binaries (initdb, pg_ctl, postgres) available for the tune tests,
# which start a throw-away cluster on loopback. Installs Debian's `postgresql` package only when
# missing; idempotent, non-interactive and quiet. Prints the binaries' folder.
set -euo pipefail

pg_bindir() {
    local dir
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

if ! dir=$(pg_bindir); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "postgres.sh: PostgreSQL is missing and apt-get is not available" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo -n"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    # the tests start their own cluster; the package's default cluster and service are not used
    $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    dir=$(pg_bindir) || { echo "postgres.sh: installed postgresql but found no pg_ctl/initdb" >&2; exit 1; }
fi
echo "$dir"
