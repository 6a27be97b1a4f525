#!/usr/bin/env bash
# Stop the throwaway cluster of scripts/slurm/up.sh: cancel its jobs, then stop slurmd, slurmctld, slurmdbd, mariadbd and
# munged, each by the PID file up.sh left in PAT_SLURM_DIR (default /tmp/pat-slurm) and only if /proc/PID/comm still names
# that daemon (PID files outlive reboots; the number may now be another process's). Logs stay in the folder; up.sh wipes it.
set -uo pipefail
DIR=${PAT_SLURM_DIR:-/tmp/pat-slurm}
die() { echo "scripts/slurm/down.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (the daemons run as root and munge); nothing stopped"
[ -d "$DIR" ] || { echo "no cluster in $DIR: nothing to stop"; exit 0; }

running() {  # running PID NAME: whether PID is still daemon NAME (an exited one, a zombie until reaped, is not)
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] && ! grep -qE '^[0-9]+ \(.*\) Z' "/proc/$1/stat" 2>/dev/null
}
ours() {  # ours NAME: the PID of daemon NAME from its PID file, if that process is still NAME
  local pid; pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && running "$pid" "$1" && echo "$pid"
}

if ours slurmctld >/dev/null && [ -f "$DIR/slurm.conf" ]; then  # its jobs first, while the controller can still cancel them
  export SLURM_CONF=$DIR/slurm.conf
  if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    scancel --full $(squeue -h -o %A | sort -u) 2>/dev/null
    for _ in $(seq 75); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

stopped=() left=()
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  pid=$(ours "$d") || continue
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do running "$pid" "$d" || break; sleep 0.1; done
  if running "$pid" "$d"; then kill -KILL "$pid" 2>/dev/null; sleep 0.2; fi
  if running "$pid" "$d"; then left+=("$d($pid)"); else stopped+=("$d"); fi
done
[ ${#left[@]} -eq 0 ] || die "could not stop ${left[*]}"
echo "Slurm is down: stopped ${stopped[*]:-nothing (none was running)}; logs in $DIR/log/"
