#!/bin/bash
# Checks scripts/slurm/grid-array.sbatch on a one-node Slurm cluster made on this machine:
# installs slurmctld, slurmd and munge (Debian packages; needs root), writes a one-node
# slurm.conf, starts munge, slurmctld and slurmd, submits the array job on
# studies/smoke-tiny.toml with 2 shards, waits for it, and checks that the records of both
# shards (every cell of the study) are there.
#
#   cargo build -p longctx-cli            # or --release; LONGCTX=path overrides the binary
#   sudo scripts/slurm/test-single-node.sh
#
# It leaves the daemons running; stop them with
# `kill $(cat /run/slurmctld.pid) $(cat /run/slurmd.pid)`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
LONGCTX="${LONGCTX:-$(ls -t "$TARGET"/release/longctx "$TARGET"/debug/longctx 2>/dev/null | head -1)}"
[ -x "$LONGCTX" ] || { echo "build longctx first (cargo build -p longctx-cli) or set LONGCTX" >&2; exit 1; }
STUDY=studies/smoke-tiny.toml
WORK="$(mktemp -d /tmp/longctx-slurm.XXXXXX)"
OUT="$WORK/runs"
chmod 755 "$WORK"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y slurmctld slurmd munge slurm-client
fi

# munge: the authentication every Slurm daemon and client uses.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- munged --force 2>/dev/null || munged --force
fi

# A one-node cluster: this host, its CPUs and memory.
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2/1024) - 512}' /proc/meminfo)"
CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=longctx-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|alloc' && break
    sleep 1
done
sinfo

JOB="$(LONGCTX="$LONGCTX" OUT="$OUT" sbatch --parsable --array=1-2 --cpus-per-task=1 \
    --chdir="$ROOT" --output="$WORK/grid-%A_%a.out" --export=ALL \
    scripts/slurm/grid-array.sbatch "$STUDY")"
echo "submitted array job $JOB"
for _ in $(seq 600); do
    [ -z "$(squeue -h -j "$JOB" 2>/dev/null)" ] && break
    sleep 1
done
cat "$WORK"/grid-*.out

# Every cell of the study has its record, exactly one, and no partial file is left.
EXPECTED="$("$LONGCTX" grid "$STUDY" --out "$OUT" --dry-run | tail -n +2)"
echo "$EXPECTED"
if echo "$EXPECTED" | awk '{print $2}' | grep -qv '^done$'; then
    echo "FAIL: cells without a record" >&2
    exit 1
fi
N_CELLS="$(echo "$EXPECTED" | wc -l)"
N_RECORDS="$(find "$OUT" -name '*.json' | wc -l)"
N_PARTIAL="$(find "$OUT" -name '*.partial.jsonl' | wc -l)"
for shard in 1 2; do
    grep -q "done" "$WORK"/grid-*_"$shard".out || { echo "FAIL: shard $shard finished no cell" >&2; exit 1; }
done
if [ "$N_RECORDS" != "$N_CELLS" ] || [ "$N_PARTIAL" != 0 ]; then
    echo "FAIL: $N_RECORDS records for $N_CELLS cells, $N_PARTIAL partial files" >&2
    exit 1
fi
echo "OK: $N_CELLS cells, $N_RECORDS records from 2 shards under $OUT"
