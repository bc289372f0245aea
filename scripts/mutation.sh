#!/usr/bin/env bash
# Mutation testing of the pure core: do the unit tests fail when its code is wrong?
#
#   bash scripts/mutation.sh                                  # engine.py: 539 mutants, over an hour
#   bash scripts/mutation.sh stream_expiry/state/processor.py stream_expiry/holds.py
#   (round 49, 2 cores shared: a mutant that makes a test hang costs up to minutes; in the
#   folder it prints, `mutmut run "stream_expiry.engine.x_NAME*"` runs one function's only)
#
# mutmut changes one operator, constant or argument at a time and runs the unit tests that
# cover it (tests/unit: the integration tests need a broker and take minutes a run); a
# mutant the tests pass ("survived") is a change of behaviour nobody checks, or an
# equivalent program (a cancel the next line does anyway, a metric's name). Not in CI: it
# runs the tests hundreds of times. It works on a copy of the committed tree (git archive)
# under a temporary folder, with hypothesis held to 60 examples a test so a run ends; the
# survivors are listed at the end, `cd <folder> && mutmut show <name>` shows one.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(stream_expiry/engine.py)
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]" "mutmut>=3.8,<4"
work=$(mktemp -d)
git archive HEAD | tar -x -C "$work"
cd "$work"
sed -i 's/max_examples=[0-9]*/max_examples=60/' tests/unit/*.py
quoted=$(printf '"%s", ' "${paths[@]}")
cat >> pyproject.toml <<EOF

[tool.mutmut]
source_paths = [${quoted%, }]
# Left out: test_deploy checks the deployment files (not copied here) against each other,
# and the malloc test measures a child interpreter, which fails under mutmut's harness.
pytest_add_cli_args_test_selection = ["tests/unit/", "--ignore=tests/unit/test_deploy.py",
  "--deselect=tests/unit/test_replay_workers.py::test_freed_buffers_are_given_back_not_kept_in_the_heap"]
also_copy = ["stream_expiry", "bench", "schemas", "examples", "docs", "README.md",
  "docker-compose.yml", "Dockerfile", "deploy"]
EOF
echo "mutating ${paths[*]} in $work" >&2
mutmut run --max-children 1 >"$work/mutmut.log" 2>&1 || true
# The unit tests must pass in the copy before a mutant means anything; when they do not
# (a file they read was not copied), mutmut lists nothing as survived: say so, not "none".
if grep -q "failed to collect stats" "$work/mutmut.log"; then
  grep -E "^(FAILED|ERROR)" "$work/mutmut.log" >&2 || true
  echo "the unit tests failed in the copy, no mutant was tried: $work/mutmut.log" >&2
  exit 1
fi
mutmut results | grep -E "survived|timeout" || echo "no survivors"
echo "folder: $work" >&2
