"""Disjoint device shares for the runs `experiments.run --parallel=N` starts together.

A worker's share is a set of environment variables (CUDA_VISIBLE_DEVICES, or the TPU_* ones
that give one process a slice of a host's chips), applied to the trainer's subprocess.
"""

import glob
import os
import subprocess

from absl import logging


def _count_gpus() -> int:
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return 0
  return (
    sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0
  )


def _count_tpu_chips() -> int:
  # TPU VMs expose one /dev/accelN (v2-v4) or /dev/vfio/N (v5e and later) per chip.
  return len(glob.glob("/dev/accel[0-9]*")) or len(glob.glob("/dev/vfio/[0-9]*"))


# TPU_CHIPS_PER_PROCESS_BOUNDS for a group of n chips of one host.
_TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}


def device_groups(parallel: int, devices: str = "") -> list[dict[str, str]]:
  """Environment updates that give each of `parallel` workers its own share of the devices.

  Args:
    parallel: how many runs at a time.
    devices: 'gpu:0,1,2,3' or 'tpu:0,1,2,3' (or plain ids, meaning GPUs); '' = detect:
      CUDA_VISIBLE_DEVICES, else nvidia-smi's GPUs, else the TPU chips of this host.

  Returns:
    One dict per worker. Without accelerators (a CPU), the workers share the host: empty dicts.

  Raises:
    ValueError: the devices do not divide into `parallel` equal groups.
  """
  if parallel < 1:
    raise ValueError(f"--parallel={parallel}: must be at least 1")
  kind, ids = "gpu", []
  if devices:
    kind, sep, rest = devices.partition(":")
    if not sep:
      kind, rest = "gpu", devices
    ids = [d.strip() for d in rest.split(",") if d.strip()]
  elif os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
    ids = [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
  elif n := _count_gpus():
    ids = [str(i) for i in range(n)]
  elif n := _count_tpu_chips():
    kind, ids = "tpu", [str(i) for i in range(n)]
  if kind not in ("gpu", "tpu"):
    raise ValueError(f"--devices={devices!r}: expected gpu:IDS or tpu:IDS")
  if not ids:
    if parallel > 1:
      logging.info("No accelerator found: %d runs at a time share the CPU.", parallel)
    return [{} for _ in range(parallel)]
  if len(ids) % parallel:
    raise ValueError(
      f"--parallel={parallel} does not divide the {len(ids)} {kind.upper()}(s) {ids} evenly"
    )
  size = len(ids) // parallel
  groups = [ids[i * size : (i + 1) * size] for i in range(parallel)]
  if kind == "gpu":
    return [{"CUDA_VISIBLE_DEVICES": ",".join(g)} for g in groups]
  if size not in _TPU_BOUNDS:
    raise ValueError(f"--parallel={parallel}: {size} TPU chips per run; use 1, 2 or 4")
  envs = []
  for i, group in enumerate(groups):
    port = str(8476 + i)  # Each process needs its own coordination port.
    envs.append(
      {
        "TPU_VISIBLE_CHIPS": ",".join(group),
        "TPU_VISIBLE_DEVICES": ",".join(group),  # The older name of the same setting.
        "TPU_CHIPS_PER_PROCESS_BOUNDS": _TPU_BOUNDS[size],
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": port,
        "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
        "TPU_MESH_CONTROLLER_PORT": port,
        "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
      }
    )
  return envs
