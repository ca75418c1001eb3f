#!/bin/bash
# Runs jobs/train.sbatch and jobs/eval.sbatch under a private Slurm controller on loopback (called by
# tests/test_slurm.c): throw-away slurm.conf in WORK, slurmctld + slurmd started here and stopped by pid on any exit.
# The training job (2 tasks, tiny preset) gets the pre-emption warning (SIGUSR1 to the batch shell) mid-run, writes
# a checkpoint, requeues itself and finishes after the requeue. Exit status 77: Slurm is not installed.
#   tests/slurm/train_eval_job.sh SOURCE_DIR BIN_DIR DATA_DIR WORK
set -u
SRC=$1 BIN=$2 DATA=$3 WORK=$4
command -v slurmctld > /dev/null && command -v sbatch > /dev/null || exit 77
rm -rf "$WORK" && mkdir -p "$WORK/state" "$WORK/spool" || exit 1
export SLURM_CONF=$WORK/slurm.conf
port=$(( 20000 + $$ % 20000 ))
node=$(hostname -s)
cat > "$SLURM_CONF" <<CONF
ClusterName=hdlmtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$(( port + 1 ))
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

stop_daemons() {
    for d in slurmd slurmctld; do
        [ -f "$WORK/$d.pid" ] && kill "$(cat "$WORK/$d.pid")" 2>/dev/null
    done
    sleep 0.5
}
trap stop_daemons EXIT
slurmctld -f "$SLURM_CONF" || { cat "$WORK/slurmctld.log"; exit 1; }
slurmd -f "$SLURM_CONF" || { cat "$WORK/slurmd.log"; exit 1; }
for i in $(seq 100); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 0.1; done
sinfo -h -o %T | grep -q idle || { echo "node not idle"; sinfo; cat "$WORK/slurmctld.log"; exit 1; }

state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
wait_for() {   # job, wanted states (regex), seconds
    for i in $(seq $(( $3 * 10 ))); do state "$1" | grep -Eqx "$2" && return 0; sleep 0.1; done
    echo "job $1 is $(state "$1"), expected $2"; scontrol show job "$1"; return 1
}

run=$WORK/run
cd "$SRC" || exit 1
# 40 updates of about 0.3 s; the warning comes after 5 logged updates (metrics.jsonl also holds update 0).
job=$(sbatch --parsable -n 2 --output="$WORK/train-%j.out" \
    --export=ALL,HDLM_ROOT="$SRC",HDLM_BIN="$BIN",CONFIG=jobs/configs/tiny.yaml,RUN_DIR="$run",MPIRUN_ARGS="-x OMPI_MCA_pml=ob1",OVERRIDES="data.train=$DATA data.valid=$DATA training.n_iters=40 training.log_freq=1 training.eval_freq=20 training.snapshot_freq=20 run.keep_last=5" \
    jobs/train.sbatch) || exit 1
echo "training job $job"
wait_for "$job" RUNNING 30 || exit 1
for i in $(seq 600); do [ "$(cat "$run/metrics.jsonl" 2>/dev/null | wc -l)" -ge 6 ] && break; sleep 0.1; done
scancel --signal=USR1 --batch "$job" || exit 1
echo "sent SIGUSR1 to the batch shell at update $(( $(wc -l < "$run/metrics.jsonl") - 1 ))"
# Slurm holds a requeued job for 2 minutes (BeginTime); release it once slurmd's revocation of the first run's job
# credential is in the past (a start within the same seconds is refused with "Job credential revoked").
for i in $(seq 300); do
    scontrol show job "$job" | grep -q "Restarts=1" && state "$job" | grep -qx PENDING && break
    sleep 0.1
done
sleep 3
scontrol update JobId="$job" StartTime=now || exit 1
for i in $(seq 900); do
    s=$(state "$job")
    [ "$s" = COMPLETED ] && break
    case "$s" in FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break;; esac
    sleep 0.1
done
cat "$WORK"/train-"$job".out
scontrol show job "$job" | grep -E "JobState|Restarts"
[ "$(state "$job")" = COMPLETED ] || { echo "training job ended $(state "$job")"; exit 1; }
restarts=$(scontrol show job "$job" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p')
[ "$restarts" -ge 1 ] || { echo "the job was not requeued"; exit 1; }
grep -q "stop signal: exiting with status 75" "$WORK"/train-"$job".out || { echo "no pre-emption checkpoint"; exit 1; }
grep -q "resumed at update" "$WORK"/train-"$job".out || { echo "the requeued job did not resume"; exit 1; }
grep -qx "update 40" "$run/DONE" || { echo "no DONE marker"; exit 1; }
[ -d "$run/checkpoints/step_000000040" ] && [ "$(cat "$run/checkpoints/latest")" = step_000000040 ] ||
    { echo "no final checkpoint"; ls "$run/checkpoints"; exit 1; }
# The final loss: well below the first update's (about ln 50257 = 10.8) and the same as logged by rank 0.
loss() { sed -n "s/^{\"update\":$1,.*\"loss\":\([0-9.]*\),.*/\1/p" "$run/metrics.jsonl" | tail -n 1; }
echo "loss at update 1: $(loss 1), at update 40: $(loss 40)"
awk -v a="$(loss 1)" -v b="$(loss 40)" 'BEGIN { exit !(b > 0 && b < a - 2) }' || { echo "the loss did not fall"; exit 1; }

ejob=$(sbatch --parsable -n 2 --output="$WORK/eval-%j.out" \
    --export=ALL,HDLM_ROOT="$SRC",HDLM_BIN="$BIN",CKPT="$run/checkpoints",DATA="$DATA",MPIRUN_ARGS="-x OMPI_MCA_pml=ob1",PERPLEXITY_ARGS="--copies 2 --rounds 1 --json",SAMPLE_ARGS="--n 2 --steps 8" \
    jobs/eval.sbatch) || exit 1
echo "evaluation job $ejob"
for i in $(seq 900); do
    case "$(state "$ejob")" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break;; esac
    sleep 0.1
done
cat "$WORK"/eval-"$ejob".out
[ "$(state "$ejob")" = COMPLETED ] || { echo "evaluation job ended $(state "$ejob")"; exit 1; }
exit 0
