# shellcheck shell=bash
# Shared by jobs/*.sbatch: the layout of the job (ranks, threads) from Slurm's variables, or from this machine when
# the script runs without Slurm. Sourced, not run.

# Ranks per node: one per GPU when the node has GPUs, else one per CPU socket.
hdlm_ranks_per_node() {
    if [ -n "${SLURM_GPUS_ON_NODE:-}" ] && [ "${SLURM_GPUS_ON_NODE}" -gt 0 ] 2>/dev/null; then
        echo "$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
        nvidia-smi -L | wc -l
    else
        local sockets
        sockets=$(lscpu -p=SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l)
        echo "$(( sockets > 0 ? sockets : 1 ))"
    fi
}

# Sets HDLM_RANKS (total) and OMP_NUM_THREADS. RANKS_PER_NODE=auto picks GPUs or sockets; an explicit
# `sbatch --ntasks` wins over both.
hdlm_layout() {
    local nodes=${SLURM_JOB_NUM_NODES:-1} per_node=$RANKS_PER_NODE
    [ "$per_node" = auto ] && per_node=$(hdlm_ranks_per_node)
    HDLM_RANKS=${SLURM_NTASKS:-$(( nodes * per_node ))}
    local cores_per_node=${SLURM_CPUS_ON_NODE:-$(nproc)}
    local ranks_here=$(( (HDLM_RANKS + nodes - 1) / nodes ))
    export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-$(( cores_per_node / ranks_here > 0 ? cores_per_node / ranks_here : 1 ))}
}

# Replaces the calling (sub)shell with mpirun, so that $! of `hdlm_mpirun ... &` is mpirun itself: signals
# forwarded to it reach the ranks. Call it in a subshell or in the background. mpirun with one rank per slot of the allocation (Open MPI reads the Slurm allocation itself) or of this machine.
hdlm_mpirun() {
    local extra=()
    [ "$(id -u)" = 0 ] && extra+=(--allow-run-as-root)
    [ -z "${SLURM_JOB_ID:-}" ] && extra+=(--oversubscribe)
    # shellcheck disable=SC2086  # MPIRUN_ARGS holds several flags
    exec mpirun "${extra[@]}" -np "$HDLM_RANKS" --bind-to none -x OMP_NUM_THREADS $MPIRUN_ARGS "$@"
}
