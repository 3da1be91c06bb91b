#!/usr/bin/env bash
# Install a single-node SLURM (Debian's slurm-wlm + munge) for the real-SLURM test
# (tests/launch/test_slurm_real.py). Does nothing when sbatch, slurmctld, slurmd and munged are
# already on PATH. Needs root and Debian's package registry; configures nothing and starts nothing:
# the test writes its own slurm.conf and munge key in a temporary directory and starts (and stops)
# only its own daemons.
set -euo pipefail
have_all() {
    local c
    for c in sbatch scancel squeue scontrol slurmctld slurmd munged; do
        command -v "$c" >/dev/null 2>&1 || [[ -x "/usr/sbin/$c" ]] || return 1
    done
}
if have_all; then
    echo "[install_slurm] slurm-wlm and munge already installed"
    exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
    echo "[install_slurm] not root: skipping (install slurm-wlm and munge to run the real-SLURM test)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends slurm-wlm munge
# No daemon is started or configured here (in a container without an init system the packages start
# none); the test starts its own with its own config and stops exactly those.
have_all && echo "[install_slurm] installed: $(sbatch --version)"
