#!/usr/bin/env bash
# make demo: break the running lab on purpose, diagnose it, recover it, diagnose again.
#   DEMO_FAULT=<fault> make demo    any lab fault (docs/lab.md); default app-down
# Each playbook's whole output goes to reports/demo-<step>.log; the screen shows the verdict table, the recap and,
# when a step fails, the reason (the failed task and its message), and the demo stops with that step's exit code.
# Secrets come the way a vault gives them: the lab writes its lab-only funding key into $P3LAB_DIR/lab-secrets.yml
# (mode 0600) and the demo passes that file with -e @file, never a secret on the command line.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_CONFIG=$PWD/ansible.cfg PATH=$PWD/.venv/bin:$PATH
FAULT=${DEMO_FAULT:-app-down}
LAB_DIR=${P3LAB_DIR:-$PWD/.lab}
INVENTORY=$LAB_DIR/inventory.yml
[ -f "$INVENTORY" ] || INVENTORY=lab/inventory.yml
SECRETS=(-e "@$LAB_DIR/lab-secrets.yml")
# DEMO_ARGS: more ansible-playbook arguments for every step (e.g. -e p3_fail_on_unhealthy=true); no secrets here.
read -r -a EXTRA <<<"${DEMO_ARGS:-}"
# One incident per demo (its runs share one timeline and one postmortem), as an operator or AWX names it; without
# an id the incident callback would continue an incident an earlier demo left open on the same lab.
EXTRA=(-e "p3_incident_id=demo-$FAULT-$(date -u +%Y%m%dT%H%M%SZ)" ${EXTRA[@]+"${EXTRA[@]}"})
LOGS=${DEMO_LOG_DIR:-reports}
mkdir -p "$LOGS"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The reason of every failed (not ignored) task in an ansible-playbook output: its header and message lines.
reasons() {
  awk '
    /^TASK \[/ { task = $0; next }
    /^(fatal|failed): \[/ { inblock = 1; buf = task "\n" $0; next }
    inblock && /^\.\.\.ignoring/ { inblock = 0; buf = ""; next }
    inblock && (/^$/ || /^(TASK|PLAY|RUNNING HANDLER) /) { print buf; print ""; inblock = 0; buf = "" }
    inblock { buf = buf "\n" $0 }
    END { if (inblock) print buf }
  ' "$1" | grep -v '^\s*\(invocation\|module_args\):' || true
}

# play NAME FILTER PLAYBOOK [ARGS...]: run a playbook, log it whole, show FILTER's lines; on failure show why and stop.
play() {
  local name=$1 filter=$2 log
  shift 2
  log=$LOGS/demo-$name.log
  say "${name^}: ansible-playbook -i $INVENTORY $*"
  set +e
  ansible-playbook -i "$INVENTORY" "${SECRETS[@]}" "$@" ${EXTRA[@]+"${EXTRA[@]}"} >"$log" 2>&1
  local rc=$?
  set -e
  sed -n "$filter" "$log"
  if [ $rc -ne 0 ]; then
    printf '\n\033[1;31m== %s failed (exit %d). Why:\033[0m\n' "$name" "$rc"
    reasons "$log" | tail -n 60
    echo "(whole output: $log)"
    exit $rc
  fi
}
# sed programs (single quotes on purpose: $ is sed's end of input, not a shell expansion)
# shellcheck disable=SC2016
TABLE='/Show the verdict table/,/^$/p;/Show the incident record/,/^$/p;/PLAY RECAP/,$p'
# shellcheck disable=SC2016
RECAP='/Show the incident record/,/^$/p;/PLAY RECAP/,$p'

say "Healing the lab first (undoing any earlier fault)"
.venv/bin/python lab/p3lab heal >/dev/null
.venv/bin/python lab/p3lab status

say "Injecting fault: $FAULT"
.venv/bin/python lab/p3lab fault "$FAULT"

play diagnose "$TABLE" playbooks/diagnose.yml

if [ "$FAULT" = app-down ]; then
  play recover "$RECAP" playbooks/restart_app.yml
elif [ "$FAULT" = db-exhaustion ]; then
  # The fault's queries are seconds old; the runbook's policy (and the role's default) is 5 minutes.
  # shellcheck disable=SC2016
  play recover '/Show what was seen/,/^$/p;/Show the incident record/,/^$/p;/PLAY RECAP/,$p' \
    playbooks/recover_database.yml -e p3_db_min_age_seconds=1
else
  # Any other fault: every scenario in the runbook's recovery order, each acting only where something is wrong.
  play recover "$TABLE" playbooks/recover_all.yml -e p3_db_min_age_seconds=1
fi
play diagnose-again "$TABLE" playbooks/diagnose.yml
say "Reports, incident timeline and postmortem are in reports/; stop the lab with: make lab-down"
