"""The multi-node recipes of ``examples/multinode``: their ``crl fit`` command lines parse, with the layout they say.

``srun`` and ``torchrun`` are replaced by stand-ins that run the command they are given once, on this machine,
with ``--print_config`` (the torchrun one parses its options with torchrun's own parser first).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "examples" / "multinode"
TORCHRUN = f"""#!{sys.executable}
import runpy, sys
from torch.distributed.run import get_args_parser
args = get_args_parser().parse_args(sys.argv[1:])
print(f"torchrun: nnodes={{args.nnodes}} nproc_per_node={{args.nproc_per_node}} node_rank={{args.node_rank}} "
      f"master={{args.master_addr}}:{{args.master_port}}", file=sys.stderr)
assert args.module, "expected torchrun -m crl_lightning"
sys.argv = [args.training_script, *args.training_script_args]
runpy.run_module(args.training_script, run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def launchers(tmp_path):
    """A folder with stand-ins for ``srun`` (runs its arguments) and ``torchrun``, and ``crl``, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (bin_dir / "torchrun").write_text(TORCHRUN)
    (bin_dir / "crl").write_text(f'#!/bin/bash\nexec "{sys.executable}" -m crl_lightning "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize(("script", "env"), [
    ("slurm.sbatch", {"SLURM_JOB_NUM_NODES": "3", "SLURM_NTASKS_PER_NODE": "4"}),
    ("torchrun.sh", {"NNODES": "3", "GPUS": "4", "NODE_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29400"}),
])
def test_recipe_runs_crl_fit_on_nodes_times_gpus_with_ddp(script, env, launchers):
    result = subprocess.run(["bash", str(RECIPES / script), "--print_config"], cwd=REPO, env={**launchers, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    trainer = config["trainer"]
    assert (trainer["num_nodes"], str(trainer["devices"]), trainer["strategy"]) == (3, "4", "ddp")  # "4": 4 GPUs
    assert config["model"]["init_args"]["backbone"] == "cifar_resnet34"  # the default CONFIG, CIFAR-10 ResNet-34
    if script == "torchrun.sh":
        assert "torchrun: nnodes=3 nproc_per_node=4 node_rank=1 master=node0:29400" in result.stderr
