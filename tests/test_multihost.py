"""Two hosts for real: 2 processes x 4 CPU devices on localhost against one process x 8.

Both processes run `python -m mask2face.main --config.multihost=True` with
`JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>`, `JAX_NUM_PROCESSES=2`, `JAX_PROCESS_ID=i` (JAX's
CPU collectives: Gloo) and 2 grain workers each. They build the missing landmark cache (process
0 alone, behind a barrier), train, validate, save, are both killed with SIGKILL after a
checkpoint, and are started again to resume, test and write results.json. A single process
with 8 devices then runs the same config on the same data and seed: the metrics agree within
1e-5 (SGD, so float noise in the cross-process reductions is not amplified as by Adam's first
step). Only process 0 writes logs, images and results.
"""

import json
import socket

import tiny_run

NUM_TRAIN_STEPS = 6
OVERRIDES = dict(
  num_train_steps=NUM_TRAIN_STEPS,
  eval_every_steps=2,
  checkpoint_every_steps=2,
  batch_size=8,
  eval_batch_size=8,
  optimizer="sgd",
  learning_rate=0.05,
  **{"data.worker_count": 2, "data.worker_buffer_size": 1},
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_hosts(workdir, flags, logs):
  port = _free_port()
  return [
    tiny_run.start(
      workdir,
      [*flags, "--config.multihost=True"],
      log=logs[i],
      env=tiny_run.environment(
        devices=4,
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(i),
      ),
    )
    for i in range(2)
  ]


def test_two_processes_match_one_process_with_eight_devices(tmp_path, astronaut, grace_hopper):
  faces = tiny_run.make_faces(tmp_path / "faces", astronaut, grace_hopper)
  cache = tmp_path / "landmarks.json"  # Missing: process 0 builds it.
  flags = tiny_run.config_flags(faces, cache, tmp_path / "jax_cache", **OVERRIDES)
  workdir = tmp_path / "two_hosts"
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]

  procs = _start_hosts(workdir, flags, logs)
  saved = workdir / "checkpoints" / "2"
  assert tiny_run.wait_for(saved.exists, timeout=900, proc=procs[0], what="checkpoint 2"), (
    logs[0].read_text()[-4000:] + logs[1].read_text()[-4000:]
  )
  for proc in procs:
    tiny_run.stop(proc)  # SIGKILL, grain workers included.
  assert not (workdir / "results.json").exists()
  # The cache was built once, by process 0 ("Landmarks for <source> -> <cache>: <summary>").
  first = [log.read_text() for log in logs]
  assert f"-> {cache}:" in first[0] and f"-> {cache}:" not in first[1]

  logs = [tmp_path / f"process_{i}.resume.log" for i in range(2)]
  procs = _start_hosts(workdir, flags, logs)
  for i, proc in enumerate(procs):
    assert proc.wait(timeout=900) == 0, logs[i].read_text()[-6000:]
  texts = [log.read_text() for log in logs]
  assert "Resumed from" in texts[0] and "Resumed from" in texts[1]
  assert not any(f"-> {cache}:" in text for text in texts)  # The resume reads the cache.

  # Process 0 alone wrote the logs: each step's lines once, however many hosts.
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  for key in ("train_loss", "eval_loss"):
    steps = [x["step"] for x in lines if key in x]
    assert len(steps) == len(set(steps)), (key, steps)
  assert sorted(x["step"] for x in lines if "train_loss" in x) == list(
    range(1, NUM_TRAIN_STEPS + 1)
  )
  record = json.loads((workdir / "results.json").read_text())
  assert record["process_count"] == 2 and record["device_count"] == 8
  assert (workdir / "images" / "test.png").exists()

  single = tmp_path / "one_host"
  log = tmp_path / "one_host.log"
  proc = tiny_run.start(single, flags, log=log, env=tiny_run.environment(devices=8))
  assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
  assert json.loads((single / "results.json").read_text())["process_count"] == 1
  tiny_run.assert_same_results(tiny_run.results(single), tiny_run.results(workdir), atol=1e-5)
