"""``python -m ray_cluster.slurm wait-nodes <address> <nodes>``: run inside a Slurm job by quarry.sbatch."""

import sys

from ray_cluster.slurm import main

sys.exit(main(sys.argv[1:]))
