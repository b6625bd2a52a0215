#!/usr/bin/env bash
# make demo: break the running lab on purpose, diagnose it, recover it, diagnose again.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_CONFIG=$PWD/ansible.cfg PATH=$PWD/.venv/bin:$PATH
FAULT=${DEMO_FAULT:-app-down}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Healing the lab first (undoing any earlier fault)"
.venv/bin/python lab/p3lab heal >/dev/null
.venv/bin/python lab/p3lab status

say "Injecting fault: $FAULT"
.venv/bin/python lab/p3lab fault "$FAULT"

say "Diagnosing: ansible-playbook -i lab/inventory.yml playbooks/diagnose.yml"
ansible-playbook -i lab/inventory.yml playbooks/diagnose.yml | sed -n '/Show the verdict table/,/^$/p;/PLAY RECAP/,$p'

if [ "$FAULT" = app-down ]; then
  say "Recovering: ansible-playbook -i lab/inventory.yml playbooks/restart_app.yml"
  ansible-playbook -i lab/inventory.yml playbooks/restart_app.yml | sed -n '/PLAY RECAP/,$p'
  say "Diagnosing again"
  ansible-playbook -i lab/inventory.yml playbooks/diagnose.yml | sed -n '/Show the verdict table/,/^$/p'
elif [ "$FAULT" = db-exhaustion ]; then
  # The fault's queries are seconds old; the runbook's policy (and the role's default) is 5 minutes.
  say "Recovering: ansible-playbook -i lab/inventory.yml playbooks/recover_database.yml -e p3_db_min_age_seconds=1"
  ansible-playbook -i lab/inventory.yml playbooks/recover_database.yml -e p3_db_min_age_seconds=1 \
    | sed -n '/Show what was seen/,/^$/p;/PLAY RECAP/,$p'
  say "Diagnosing again"
  ansible-playbook -i lab/inventory.yml playbooks/diagnose.yml | sed -n '/Show the verdict table/,/^$/p'
else
  # Any other fault: every scenario in the runbook's recovery order, each acting only where something is wrong.
  say "Recovering: ansible-playbook -i lab/inventory.yml playbooks/recover_all.yml -e p3_db_min_age_seconds=1"
  ansible-playbook -i lab/inventory.yml playbooks/recover_all.yml -e p3_db_min_age_seconds=1 \
    | sed -n '/PLAY RECAP/,$p'
  say "Diagnosing again"
  ansible-playbook -i lab/inventory.yml playbooks/diagnose.yml | sed -n '/Show the verdict table/,/^$/p'
fi
say "Reports are in reports/; stop the lab with: make lab-down"
