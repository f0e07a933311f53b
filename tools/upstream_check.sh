#!/usr/bin/env bash
# Run SpeechBrain's own checks on this recipe, as a pull request would face them.
#
#   tools/upstream_check.sh PATH_TO_SPEECHBRAIN [--no-recipe-tests]
#
# PATH_TO_SPEECHBRAIN is a SpeechBrain checkout (the develop branch): a work
# tree, or a bare git directory (its HEAD is used). Nothing in it is changed:
# a temporary copy gets the overlay that an upstream pull request would make:
#
#   recipes/UrbanSound8k/        replaced by ours (the old ECAPA recipe goes)
#   tests/recipes/UrbanSound8k.csv
#   tests/samples/UrbanSound8k/
#   tests/recipes/setup/recipes_UrbanSound8k_SoundClassification_train/
#                                removed (the old row's setup, now unused)
#
# and then runs, from the copy's root:
#   1. pytest tests/consistency                       (SpeechBrain's checks)
#   2. ruff check + ruff format --check, yamllint, codespell on the overlay,
#      with SpeechBrain's pinned linters (lint-requirements.txt) and settings
#   3. load_yaml_test for the UrbanSound8k rows
#   4. run_recipe_tests for the UrbanSound8k rows, on the CPU
#
# The Python on PATH must have this plugin installed (pip install -e .) and
# pytest; the linters are installed into a throwaway virtual environment.
# Exit status: 0 when every check passes.
set -uo pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
SB=$(cd "$1" && pwd)
RECIPE_TESTS=1
[ "${2:-}" = "--no-recipe-tests" ] && RECIPE_TESTS=0
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sb-upstream-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PYTHON=${PYTHON:-python3}

echo "== copying $SB to $WORK/speechbrain"
mkdir -p "$WORK/speechbrain"
if git -C "$SB" rev-parse --is-bare-repository 2>/dev/null | grep -q true; then
    git -C "$SB" archive HEAD | tar -x -C "$WORK/speechbrain"
else
    (cd "$SB" && tar --exclude=.git -cf - .) | tar -x -C "$WORK/speechbrain"
fi
cd "$WORK/speechbrain" || exit 2
echo "   SpeechBrain $(cat speechbrain/version.txt 2>/dev/null)"

echo "== overlay"
rm -rf recipes/UrbanSound8k tests/samples/UrbanSound8k \
    tests/recipes/setup/recipes_UrbanSound8k_SoundClassification_train
cp -a "$REPO/recipes/UrbanSound8k" recipes/
cp "$REPO/tests/recipes/UrbanSound8k.csv" tests/recipes/
mkdir -p tests/samples
cp -a "$REPO/tests/samples/UrbanSound8k" tests/samples/
OVERLAY=$(find recipes/UrbanSound8k tests/recipes/UrbanSound8k.csv \
    tests/samples/UrbanSound8k -type f | sort)
PY_FILES=$(echo "$OVERLAY" | grep -E '\.py$')
YAML_FILES=$(echo "$OVERLAY" | grep -E '\.ya?ml$')
TEXT_FILES=$(echo "$OVERLAY" | grep -vE '\.(wav|flac|ogg)$')

declare -A RESULT
run() {  # run NAME COMMAND...: record PASS or FAIL
    local name=$1
    shift
    echo "== $name"
    if "$@"; then RESULT[$name]=PASS; else RESULT[$name]=FAIL; fi
}

echo "== linters (SpeechBrain's pinned versions)"
"$PYTHON" -m venv "$WORK/lint" &&
    "$WORK/lint/bin/pip" install -q -r lint-requirements.txt tomli ||
    echo "could not install the linters"
LINT=$WORK/lint/bin

run consistency "$PYTHON" -m pytest -q -p no:cacheprovider tests/consistency
# shellcheck disable=SC2086
run ruff-check "$LINT/ruff" check $PY_FILES
# shellcheck disable=SC2086
run ruff-format "$LINT/ruff" format --check $PY_FILES
# shellcheck disable=SC2086
run yamllint "$LINT/yamllint" --no-warnings $YAML_FILES
# shellcheck disable=SC2086
run codespell "$LINT/codespell" --ignore-words=.dict-speechbrain.txt $TEXT_FILES
run load_yaml_test "$PYTHON" -c '
import sys
from tests.utils.recipe_tests import load_yaml_test
ok = load_yaml_test(filters_fields=["Dataset"], filters=[["UrbanSound8k"]])
sys.exit(0 if ok else 1)'
if [ "$RECIPE_TESTS" = 1 ]; then
    run run_recipe_tests "$PYTHON" -c '
import sys
from tests.utils.recipe_tests import run_recipe_tests
ok = run_recipe_tests(
    run_opts="--device=cpu",
    filters_fields=["Dataset"],
    filters=[["UrbanSound8k"]],
    do_checks=True,
)
sys.exit(0 if ok else 1)'
    [ "${RESULT[run_recipe_tests]}" = FAIL ] &&
        tail -n 30 tests/tmp/*/stderr.txt 2>/dev/null
fi

echo
echo "== summary (SpeechBrain $(cat speechbrain/version.txt 2>/dev/null), $(git -C "$SB" log -1 --format='%h %cd' --date=short 2>/dev/null))"
status=0
for name in consistency ruff-check ruff-format yamllint codespell \
    load_yaml_test run_recipe_tests; do
    [ -z "${RESULT[$name]:-}" ] && continue
    printf '%-18s %s\n' "$name" "${RESULT[$name]}"
    [ "${RESULT[$name]}" = PASS ] || status=1
done
exit $status
