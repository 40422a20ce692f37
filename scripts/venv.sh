# Sourced by ./quickstart and ./test, from the repository root: the repository's .venv,
# made and installed on first use, then activated.
#
# `pip install -e ".[test]"` runs when .venv holds no runner installed from this clone, or
# when pyproject.toml (the dependencies) has changed since the last install; otherwise this
# takes a fraction of a second. PYTHON names the interpreter that makes .venv (default
# python3; runner needs 3.11 or newer).

venv=.venv
stamp=$venv/.installed-pyproject.toml # the pyproject.toml of the last install that finished
here=$(pwd -P)

if [[ ! -x $venv/bin/python ]]; then
    echo "setting up $venv: ${PYTHON:-python3} -m venv $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv"
fi
# Where .venv's runner is installed from (-I: not from the current directory, which would
# answer for any clone).
installed=$("$venv/bin/python" -I -c \
    'import os, runner; print(os.path.dirname(os.path.dirname(os.path.realpath(runner.__file__))))' \
    2>/dev/null) || true
if [[ $installed != "$here" ]] || ! cmp -s pyproject.toml "$stamp"; then
    echo "installing runner into $venv: pip install -e \".[test]\"" >&2
    "$venv/bin/python" -m pip install -e ".[test]"
    cp pyproject.toml "$stamp"
fi
# shellcheck source=/dev/null
. "$venv/bin/activate"
unset venv stamp here installed
