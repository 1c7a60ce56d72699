#!/usr/bin/env bash
# Start (or continue) study queues in the background: one process per quoted queue, one torch
# thread each, each in its own detached git work tree of this commit (../study1, ../study2, ...),
# so that editing this checkout never changes the code a running study imports.
#
#   bash experiments/launch.sh "experiments/shortanswer.yaml experiments/alpha_beta.yaml" \
#                              "experiments/targets_first.yaml experiments/ratio_sweep.yaml"
#   bash experiments/launch.sh        # the queues of experiments/queues.txt, one line per process
#
# A queue given as - leaves that process alone (bash experiments/launch.sh - "B.yaml" restarts
# only process 2). Before it moves a work tree to this commit it copies the cell JSONs finished there (new, untracked files) back into
# this checkout's experiments/results/ (cp -n: nothing here is overwritten); run
#   bash experiments/launch.sh --collect
# to do only that (before committing results). Logs: ../tokenseek-runs/study<N>.log. Runs,
# checkpoints and score stores live in the studies' runs_dir (../tokenseek-runs/experiments),
# shared by all trees, so a process started later continues where an earlier one stopped.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

collect() {  # cells finished in every work tree -> this checkout
  local tree file
  for tree in ../study[0-9]*; do
    [[ -d $tree ]] || continue
    # Only the tree's new (untracked) result files: the ones its commit carries came from a
    # checkout, and one deleted there since must not come back.
    while IFS= read -r file; do
      mkdir -p "$(dirname "$file")"
      cp -n "$tree/$file" "$file"
    done < <(git -C "$tree" ls-files --others --exclude-standard -- 'experiments/results/*/*.json')
  done
}

if [[ $# -eq 0 && -f experiments/queues.txt ]]; then
  mapfile -t queues < <(grep -v '^[[:space:]]*\(#\|$\)' experiments/queues.txt)
  set -- "${queues[@]}"
fi
if [[ $# -eq 0 ]]; then
  echo "usage: bash experiments/launch.sh [\"A.yaml B.yaml\" [\"C.yaml ...\"]]  (one quoted queue per process; none: the lines of experiments/queues.txt) | --collect" >&2
  exit 2
fi
if [[ $1 == --collect ]]; then
  collect
  git status --short experiments/results
  exit 0
fi
for queue in "$@"; do
  [[ $queue == - ]] && continue
  for config in $queue; do
    [[ -f $config ]] || { echo "launch.sh: no study config $config" >&2; exit 2; }
  done
done
collect
commit=$(git rev-parse HEAD)
mkdir -p ../tokenseek-runs
n=0
for queue in "$@"; do
  n=$((n + 1))
  [[ $queue == - ]] && continue
  tree=$(realpath -m "../study$n")
  for pid in $(pgrep -f "tokenseek experiment" || true); do
    if [[ "$(readlink "/proc/$pid/cwd")" == "$tree" ]]; then
      echo "launch.sh: process $pid already runs a study in $tree: stop it first (kill $pid)" >&2
      exit 1
    fi
  done
  if [[ -d $tree ]]; then
    # Its results were collected above; its report edits are the runner's and regenerate.
    git -C "$tree" clean -fdq experiments/results
    git -C "$tree" checkout -q -- .
    git -C "$tree" checkout -q --detach "$commit"
  else
    git worktree add -q --detach "$tree" "$commit"
  fi
  # shellcheck disable=SC2086  # the queue is a list of paths
  (cd "$tree" && PYTHONPATH="$tree" nohup python3 -m tokenseek experiment $queue --threads 1 >>../tokenseek-runs/study$n.log 2>&1 &)
  echo "process $n: $queue (in $tree, log ../tokenseek-runs/study$n.log)"
done
