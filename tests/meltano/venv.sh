#!/usr/bin/env bash
# Creates (once) a Python virtualenv holding pinned PyPI packages and prints its
# directory. Cached in a stable place keyed by the name, the pins and the Python
# version, so the tests install Meltano and the peer connectors only once per
# machine. Safe to call from tests running in parallel (flock).
#
#   tests/meltano/venv.sh meltano meltano==4.4.1    # -> /root/.cache/.../meltano-<hash>
set -euo pipefail
name="$1"
shift
[ $# -gt 0 ] || { echo "usage: venv.sh NAME PIP-SPEC..." >&2; exit 2; }
python="${SINGER_PG_RS_PYTHON:-python3}"
pyver="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" || {
    echo "venv.sh: no working $python (set SINGER_PG_RS_PYTHON to a Python 3.10+)" >&2
    exit 1
}
key="$(printf '%s\n' "$pyver" "$@" | sha256sum | cut -c1-12)"
root="${SINGER_PG_RS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/singer-postgres-rs}/venvs"
dir="$root/$name-$key"
mkdir -p "$root"
exec 9>"$dir.lock"
flock 9
if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    log="$dir.install.log"
    {
        "$python" -m venv "$dir" &&
            "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    } >"$log" 2>&1 || {
        echo "venv.sh: installing $* into $dir failed (python $pyver); last lines of $log:" >&2
        tail -n 15 "$log" >&2
        rm -rf "$dir"
        exit 1
    }
    touch "$dir/.complete"
fi
echo "$dir"
