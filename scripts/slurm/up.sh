#!/usr/bin/env bash
# A throwaway one-node Slurm cluster on this machine, with accounting (sacct), to try `pat-reproduce --launcher slurm`:
#   sudo scripts/slurm/up.sh && export SLURM_CONF=/tmp/pat-slurm/slurm.conf     ...     sudo scripts/slurm/down.sh
# Needs root and apt (Debian/Ubuntu): installs what is missing of slurmctld slurmd slurm-client munge slurmdbd mariadb-server,
# writes every config, key, database, log and PID file into PAT_SLURM_DIR (default /tmp/pat-slurm, wiped first: job ids
# restart at 1) and starts munged, mariadbd, slurmdbd, slurmctld and slurmd there; scripts/slurm/down.sh stops exactly those.
# Ports (override with PAT_SLURM_PORT_BASE=N: N..N+3): slurmctld 6817, slurmd 6818, slurmdbd 6819, mariadb 6820, on 127.0.0.1.
set -euo pipefail
DIR=${PAT_SLURM_DIR:-/tmp/pat-slurm}
BASE=${PAT_SLURM_PORT_BASE:-6817}
HERE=$(cd "$(dirname "$0")" && pwd)
die() { echo "scripts/slurm/up.sh: $*" >&2; exit 1; }
now() { date +%s%N; }
since() { local ms=$(( ($(now) - $1) / 1000000 )); printf '%d.%d' $(( ms / 1000 )) $(( ms % 1000 / 100 )); }  # seconds since $1
t0=$(now)

[ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts daemons as root and as the munge user); not started"
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "needs apt-get to install ${missing[*]} (Debian/Ubuntu); not started"
  echo "installing ${missing[*]} (apt-get, --no-install-recommends) ..."
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # the packages' own init scripts must not start system-wide daemons
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  trap '[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } > /tmp/pat-slurm-apt.log 2>&1 \
    || die "apt-get could not install ${missing[*]}: $(tail -n 1 /tmp/pat-slurm-apt.log) (full log: /tmp/pat-slurm-apt.log)"
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d; trap - EXIT
  echo "installed in $(since "$t0") s"
fi

t1=$(now)
# an earlier cluster in the same folder: stop it, then wipe controller state and the accounting database together
[ -d "$DIR" ] && "$HERE/down.sh" >/dev/null
for port in $BASE $((BASE + 1)) $((BASE + 2)) $((BASE + 3)); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
    && die "port $port on 127.0.0.1 is taken (another Slurm or database?): set PAT_SLURM_PORT_BASE"
done
rm -rf "$DIR"; mkdir -p "$DIR"/{log,ctld,spool,munge,db}; chmod 755 "$DIR"
trap '"$HERE/down.sh" >/dev/null 2>&1' EXIT  # a bring-up that fails stops what it had started

HOST=$(hostname -s)
wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
  local n=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up in $(( n / 5 )) s (logs: $DIR/log/)"
}
alive() { [ -s "$DIR/$1.pid" ] && [ "$(cat "/proc/$(cat "$DIR/$1.pid")/comm" 2>/dev/null)" = "$1" ]; }

# munge: its own key and socket in $DIR, run as the munge user (as root it refuses its log file)
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$DIR/munge"; chmod 755 "$DIR/munge"; chmod 400 "$DIR/munge/munge.key"
SOCK=$DIR/munge/munge.socket
runuser -u munge -- munged --key-file="$DIR/munge/munge.key" --socket="$SOCK" --pid-file="$DIR/munge/munged.pid" \
  --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" || die "munged did not start (log: $DIR/munge/munged.log)"
wait_for 10 munged test -s "$DIR/munge/munged.pid"
ln -sf munge/munged.pid "$DIR/munged.pid"

# mariadb: a fresh data folder, TCP on 127.0.0.1 only, a `slurm` user for slurmdbd
chown mysql:mysql "$DIR/db"
mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/db/data" --auth-root-authentication-method=socket \
  --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (log: $DIR/log/mariadb-install.log)"
setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/db/data" --socket="$DIR/db/mysqld.sock" --pid-file="$DIR/db/mariadbd.pid" \
  --port=$((BASE + 3)) --bind-address=127.0.0.1 --skip-name-resolve --log-error="$DIR/log/mariadb.log" \
  --innodb-buffer-pool-size=64M --innodb-log-file-size=16M < /dev/null > /dev/null 2>&1 &
wait_for 60 mariadb mariadb --no-defaults --socket="$DIR/db/mysqld.sock" -u root -e 'select 1'
ln -sf db/mariadbd.pid "$DIR/mariadbd.pid"
mariadb --no-defaults --socket="$DIR/db/mysqld.sock" -u root -e \
  "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'pat-slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

# Slurm's configs: one node (this machine, as `slurmd -C` sees it) in a `debug` partition; fast requeue, start and kill
NODE=$(slurmd -C | head -n 1 | sed -E "s/^NodeName=[^ ]+/NodeName=$HOST/")
cat > "$DIR/slurm.conf" <<EOF
# written by scripts/slurm/up.sh: a throwaway one-node cluster (state in $DIR)
ClusterName=pat
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=$BASE
SlurmdPort=$((BASE + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=5
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
KillWait=5
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((BASE + 2))
AccountingStoragePass=$SOCK
MailProg=/bin/true
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$DIR/slurmdbd.conf" <<EOF
# written by scripts/slurm/up.sh
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$((BASE + 2))
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((BASE + 3))
StorageUser=slurm
StoragePass=pat-slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$DIR/slurmdbd.conf"
export SLURM_CONF=$DIR/slurm.conf

slurmdbd || die "slurmdbd did not start (log: $DIR/log/slurmdbd.log)"
wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$((BASE + 2))"
slurmctld -f "$DIR/slurm.conf" -i || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
wait_for 30 slurmctld scontrol ping
slurmd -f "$DIR/slurm.conf" -N "$HOST" || die "slurmd did not start (log: $DIR/log/slurmd.log)"
wait_for 30 "the node" bash -c "sinfo -h -N -o %T | grep -qx idle"
wait_for 30 "accounting (sacct)" bash -c "sacctmgr -n list cluster format=cluster | grep -qw pat"
for d in munged mariadbd slurmdbd slurmctld slurmd; do alive "$d" || die "$d is not running (logs: $DIR/log/)"; done
trap - EXIT
echo "Slurm is up in $(since "$t1") s ($(sinfo -h -o '%P %D node(s) %c CPUs %T'); state, logs, PID files in $DIR)."
echo "export SLURM_CONF=$DIR/slurm.conf"
