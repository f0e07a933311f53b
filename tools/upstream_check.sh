#!/usr/bin/env bash
# The pull request to SpeechBrain, built and checked as SpeechBrain checks it.
#
#   tools/upstream_check.sh PATH_TO_SPEECHBRAIN [--patches DIR] [--no-checks]
#                           [--no-recipe-tests]
#
# PATH_TO_SPEECHBRAIN is a SpeechBrain checkout (the develop branch): a work
# tree, or a bare git directory (its HEAD is used). Nothing in it is changed.
# A temporary copy is committed as it is (the base), and the pull request is
# committed on top, as ADDITIONS beside SpeechBrain's own UrbanSound8k recipe
# (docs/upstream.md says why this layout):
#
#   recipes/UrbanSound8k/SoundClassificationCNN/   our recipe folder, with
#       the YAMLs that have an UrbanSound8K result (a performance value in
#       our tests/recipes/UrbanSound8k.csv); one commit per further YAML
#   tests/recipes/UrbanSound8k.csv   our rows appended to SpeechBrain's
#   tests/samples/UrbanSound8k/      the synthetic clips (digits/ stays here)
#
# SpeechBrain's files stay as they are: the script stops if the pull request
# would delete, rename or change any (other than appending rows to the CSV).
#
#   --patches DIR      also write the commits as a patch series into DIR
#                      (absent or empty), for `git am` on SpeechBrain develop
#   --no-checks        only build the pull request (and the patches)
#   --no-recipe-tests  run every check but run_recipe_tests
#
# The checks, from the copy's root:
#   1. pytest tests/consistency                       (SpeechBrain's checks)
#   2. git diff --check (trailing whitespace), ruff check + ruff format
#      --check, yamllint, codespell on the added files, with SpeechBrain's
#      pinned linters (lint-requirements.txt)
#   3. load_yaml_test for the UrbanSound8k rows (SpeechBrain's ECAPA row too)
#   4. run_recipe_tests for our rows, on the CPU
#
# The Python on PATH must have this plugin installed (pip install -e .) and
# pytest; the linters are installed into a throwaway virtual environment.
# Exit status: 0 when every check passes, 2 for bad arguments.
set -uo pipefail

usage() {
    sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}
die() {
    echo "upstream_check: $*" >&2
    exit 2
}

SB_ARG='' PATCHES='' CHECKS=1 RECIPE_TESTS=1
while [ $# -gt 0 ]; do
    case $1 in
    --patches)
        [ $# -ge 2 ] || usage
        PATCHES=$2
        shift 2
        ;;
    --no-checks) CHECKS=0 && shift ;;
    --no-recipe-tests) RECIPE_TESTS=0 && shift ;;
    -*) usage ;;
    *)
        [ -z "$SB_ARG" ] || usage
        SB_ARG=$1
        shift
        ;;
    esac
done
[ -n "$SB_ARG" ] || usage
[ -d "$SB_ARG" ] || die "$SB_ARG is not a folder: give a SpeechBrain checkout"
SB=$(cd "$SB_ARG" && pwd)
if [ -n "$PATCHES" ]; then
    # Nothing the user has is overwritten, nothing written through a link
    if [ -L "$PATCHES" ] || { [ -e "$PATCHES" ] && [ ! -d "$PATCHES" ]; }; then
        die "--patches $PATCHES is not a folder: give a new or empty folder"
    elif [ -n "$(ls -A "$PATCHES" 2>/dev/null)" ]; then
        die "--patches $PATCHES is not empty: give a new or empty folder"
    fi
    mkdir -p "$PATCHES" || die "cannot create --patches $PATCHES"
    PATCHES=$(cd "$PATCHES" && pwd)
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
OURS=recipes/UrbanSound8k/SoundClassification     # in this repository
DEST=recipes/UrbanSound8k/SoundClassificationCNN  # in the pull request
SAMPLES=tests/samples/UrbanSound8k
CSV=tests/recipes/UrbanSound8k.csv
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sb-upstream-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
GIT=(git -c user.name="$(git -C "$REPO" config user.name ||
    echo sb-urbansound)" -c user.email="$(git -C "$REPO" config user.email ||
    echo sb-urbansound@users.noreply.github.com)" -c commit.gpgsign=false)

echo "== copying $SB to $WORK/speechbrain"
mkdir -p "$WORK/speechbrain"
if git -C "$SB" rev-parse --is-bare-repository 2>/dev/null | grep -q true; then
    git -C "$SB" archive HEAD | tar -x -C "$WORK/speechbrain"
else
    (cd "$SB" && tar --exclude=.git -cf - .) | tar -x -C "$WORK/speechbrain"
fi
cd "$WORK/speechbrain" || exit 2
SB_DESC="$(cat speechbrain/version.txt 2>/dev/null) $(git -C "$SB" log -1 \
    --format='%h %cd' --date=short 2>/dev/null)"
echo "   SpeechBrain $SB_DESC"
for path in "$DEST" "$SAMPLES"; do
    [ -e "$path" ] && die "SpeechBrain already has $path: nothing is added"
done
git init -q && git add -A && "${GIT[@]}" commit -q --no-verify \
    -m "SpeechBrain $SB_DESC, as given" || die "cannot commit the copy"
BASE=$(git rev-parse HEAD)

echo "== the pull request, beside SpeechBrain's UrbanSound8k recipe"
# rows [YAML]: without YAML, the YAMLs of the rows with a result (in
# their order); with it, append that YAML's rows to SpeechBrain's CSV, with
# our folder's paths turned into the pull request's
rows() {
    "$PYTHON" - "$REPO/$CSV" "$CSV" "$OURS/" "$DEST/" "$@" <<'EOF'
import csv
import sys

ours, theirs, old, new, *yaml = sys.argv[1:]
with open(ours, encoding="utf-8") as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
header = next(csv.reader(lines[:1]))
perf, hparam = header.index("performance"), header.index("Hparam_file")
rows = [(next(csv.reader([line])), line) for line in lines[1:]]
rows = [(r, line) for r, line in rows if r[perf].strip()]
if not yaml:
    print("\n".join(dict.fromkeys(r[hparam] for r, _ in rows)))
    sys.exit()
with open(theirs, "a", encoding="utf-8") as f:
    for r, line in rows:
        if r[hparam] == yaml[0]:
            f.write(line.replace(old, new) + "\n")
EOF
}
YAMLS=$(rows) || die "cannot read $REPO/$CSV"
[ -n "$YAMLS" ] || die "no row of $REPO/$CSV has a performance value"
FIRST=$(echo "$YAMLS" | head -n 1)
mkdir -p "$DEST" "$SAMPLES"
# Our recipe folder as git sees it (tracked and new files, nothing ignored),
# without the YAMLs that stay in this repository
git -C "$REPO" ls-files --cached --others --exclude-standard -- "$OURS" |
    sort -u | while read -r file; do
        [ -f "$REPO/$file" ] || continue
        case $file in
        *.yaml) [ "$file" = "$FIRST" ] || continue ;;
        esac
        mkdir -p "$DEST/$(dirname "${file#"$OURS"/}")"
        cp -p "$REPO/$file" "$DEST/${file#"$OURS"/}"
    done
# The samples, but for the class folders of the own-data examples
# (folders.yaml, fsdd.yaml), which stay in this repository
(cd "$REPO/$SAMPLES" && tar --exclude=./digits -cf - .) | tar -x -C "$SAMPLES"
rows "$FIRST" || die "cannot append the rows of $FIRST"
git add -A && "${GIT[@]}" commit -q --no-verify -F - <<EOF || exit 1
UrbanSound8k: a CNN recipe beside the ECAPA-TDNN one

Adds $DEST/ (train.py, its data
preparation, README, extra requirements) with ${FIRST#"$OURS"/}, its
rows in $CSV and small synthetic clips in
$SAMPLES/. SpeechBrain's ECAPA-TDNN recipe in
recipes/UrbanSound8k/SoundClassification/ is unchanged.

The recipe imports the sb-urbansound plugin (extra_requirements.txt).
EOF
echo "$YAMLS" | tail -n +2 | while read -r yaml; do
    cp -p "$REPO/$yaml" "$DEST/${yaml#"$OURS"/}"
    rows "$yaml" || exit 1
    git add -A && "${GIT[@]}" commit -q --no-verify \
        -m "UrbanSound8k: ${yaml#"$OURS"/} in SoundClassificationCNN" || exit 1
done || die "cannot commit the YAMLs"
git log --reverse --format='   %s' "$BASE..HEAD"

# Nothing of SpeechBrain's is deleted, renamed or changed, but for the rows
# appended to the CSV
CHANGED=$(git diff --no-renames --name-status "$BASE" HEAD | grep -v '^A')
REMOVED=$(git diff --no-renames "$BASE" HEAD -- "$CSV" | grep '^-[^-]')
if [ "$CHANGED" != "$(printf 'M\t%s' "$CSV")" ] || [ -n "$REMOVED" ]; then
    echo "upstream_check: the pull request changes SpeechBrain's files:" >&2
    echo "$CHANGED" "$REMOVED" >&2
    exit 1
fi
OVERLAY=$(git diff --no-renames --name-only "$BASE" HEAD)
echo "   $(echo "$OVERLAY" | wc -l) files: $(echo "$OVERLAY" |
    grep -c "^$DEST/") in $DEST, the CSV, the samples; nothing deleted"

if [ -n "$PATCHES" ]; then
    echo "== patches into $PATCHES"
    git format-patch -q -o "$WORK/patches" "$BASE..HEAD" || exit 1
    cp "$WORK/patches"/*.patch "$PATCHES"/ || exit 1
    ls "$PATCHES" | sed 's/^/   /'
fi
[ "$CHECKS" = 1 ] || exit 0

PY_FILES=$(echo "$OVERLAY" | grep -E '\.py$')
YAML_FILES=$(echo "$OVERLAY" | grep -E '\.ya?ml$')
TEXT_FILES=$(echo "$OVERLAY" | grep -vE '\.(wav|flac|ogg)$')

declare -A RESULT
run() { # run NAME COMMAND...: record PASS or FAIL
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
# SpeechBrain's pre-commit hooks refuse trailing whitespace
run whitespace git diff --check "$BASE" HEAD
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
    # Our rows: SpeechBrain's ECAPA-TDNN row is byte for byte its own (checked
    # above), and needs its own extras (scikit-learn) and downloads
    run run_recipe_tests "$PYTHON" -c '
import sys
from tests.utils.recipe_tests import run_recipe_tests
ok = run_recipe_tests(
    run_opts="--device=cpu",
    filters_fields=["Dataset", "Script_file"],
    filters=[["UrbanSound8k"], [sys.argv[1]]],
    do_checks=True,
)
sys.exit(0 if ok else 1)' "$DEST/train.py"
    [ "${RESULT[run_recipe_tests]}" = FAIL ] &&
        tail -n 30 tests/tmp/*/stderr.txt 2>/dev/null
fi

echo
echo "== summary (SpeechBrain $SB_DESC)"
status=0
for name in consistency whitespace ruff-check ruff-format yamllint codespell \
    load_yaml_test run_recipe_tests; do
    [ -z "${RESULT[$name]:-}" ] && continue
    printf '%-18s %s\n' "$name" "${RESULT[$name]}"
    [ "${RESULT[$name]}" = PASS ] || status=1
done
exit $status
