"""Sampling and scoring on a real local Ray cluster (`ray start --head`, 2 CPUs: two worker processes at once): the
same samples and scores as a local run, resume with only the missing shards, a killed worker's shard redone, and an
address that does not answer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import free_port
from rrhf_core.data.ingest import ingest
from rrhf_core.errors import ConfigError
from rrhf_core.sampling.config import SampleConfig
from rrhf_core.sampling.stage import sample
from rrhf_core.scoring.config import ScoreConfig
from rrhf_core.scoring.stage import score

pytest.importorskip("ray")
pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))


class Cluster(str):
    """A Ray head's address (what the settings take), with the temp folder that tells its processes apart."""

    def __new__(cls, address: str, marker: str) -> Cluster:
        obj = super().__new__(cls, address)
        obj.marker = marker
        return obj


def shard_workers(cluster: Cluster) -> list[int]:
    """The PIDs of this cluster's worker processes running a sampling shard now: ``ray::_shard_task`` in their
    title and this cluster's marker in their environment (no other Ray on the machine matches)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        if b"ray::_shard_task" in title and f"RRHF_TEST_RAY_CLUSTER={cluster.marker}".encode() in environ:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head on this machine with 2 CPUs (2 worker processes run shards at once); stopped afterwards."""
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    # workers import the test's reward functions (a function reward's module must be importable on every worker)
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(Path(__file__).parent)}
    env["RRHF_TEST_RAY_CLUSTER"] = str(temp)  # inherited by this cluster's workers: how the tests find them
    start = [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0"]
    start += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    yield Cluster(f"127.0.0.1:{port}", str(temp))
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prompts")
    src = folder / "p.jsonl"
    src.write_text(
        "".join(json.dumps({"prompt": f"Tell me a fact about the number {i}."}) + "\n" for i in range(8))
    )
    ingest([str(src)], folder / "ingest", eval_share=0.0)
    return folder / "ingest" / "prompts.parquet"


def _cfg(prompts: Path, out: Path, model: Path, **over) -> SampleConfig:
    base = dict(
        prompts=str(prompts),
        output_dir=str(out),
        model=str(model),
        backend="hf",
        k=2,
        max_new_tokens=24,
        temperature=1.0,
        shard_size=2,
        dtype="fp32",
    )
    return SampleConfig(**(base | over))


def _rows(path: Path) -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["prompt_id"], r["response_id"]))


def test_shards_on_ray_equal_the_local_run_and_resume_with_only_the_missing(
    cluster, prompts, tmp_path, tiny_model_dir
):
    local = sample(_cfg(prompts, tmp_path / "local", tiny_model_dir), progress=False)
    on_ray = sample(
        _cfg(prompts, tmp_path / "ray", tiny_model_dir, executor="ray", ray={"address": cluster}),
        progress=False,
    )
    assert on_ray.shards_total == on_ray.shards_done_now == 4
    assert _rows(on_ray.samples_path) == _rows(local.samples_path)

    shards = sorted((tmp_path / "ray" / "shards").glob("shard-*.parquet"))
    kept = {p.name: p.stat().st_mtime_ns for p in shards[::2]}
    for p in shards[1::2]:
        p.unlink()
    again = sample(
        _cfg(prompts, tmp_path / "ray", tiny_model_dir, executor="ray", ray={"address": cluster}),
        progress=False,
    )
    assert again.shards_done_now == 2
    assert {p.name: p.stat().st_mtime_ns for p in shards[::2]} == kept  # finished shards were not redone
    assert _rows(again.samples_path) == _rows(local.samples_path)


def test_a_killed_worker_takes_only_its_shard_with_it(cluster, prompts, tmp_path, tiny_model_dir):
    """SIGKILL a worker process while it runs a shard: Ray reruns that task, and the samples are still the local
    run's."""
    over = {"max_new_tokens": 96, "shard_size": 1}
    local = sample(_cfg(prompts, tmp_path / "local", tiny_model_dir, **over), progress=False)
    killed: list[int] = []

    def kill_one_running_shard() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            running = shard_workers(cluster)
            if running:
                os.kill(running[0], signal.SIGKILL)
                killed.append(running[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_running_shard)
    killer.start()
    r = sample(
        _cfg(prompts, tmp_path / "ray", tiny_model_dir, executor="ray", ray={"address": cluster}, **over),
        progress=False,
    )
    killer.join()
    assert killed, "no running shard task was seen to kill"
    assert r.shards_done_now == 8
    assert _rows(r.samples_path) == _rows(local.samples_path)


def test_an_address_that_does_not_answer_is_a_clear_error(prompts, tmp_path, tiny_model_dir):
    port = free_port()
    cfg = _cfg(
        prompts,
        tmp_path / "x",
        tiny_model_dir,
        executor="ray",
        ray={"address": f"127.0.0.1:{port}", "timeout_s": 2},
    )
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=rf"sample.ray.address '127.0.0.1:{port}' does not answer"):
        sample(cfg, progress=False)
    assert time.monotonic() - t0 < 30
    bad = _cfg(prompts, tmp_path / "y", tiny_model_dir, executor="ray", ray={"address": "headnode"})
    with pytest.raises(ConfigError, match="is not host:port"):
        sample(bad, progress=False)
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def test_scoring_on_ray_equals_local_scoring_and_fills_the_cache(cluster, prompts, tmp_path, tiny_model_dir):
    # 8 prompts x 10 samples: more than one chunk of 64 responses
    samples = sample(
        _cfg(prompts, tmp_path / "s", tiny_model_dir, k=10, max_new_tokens=8), progress=False
    ).samples_path

    def cfg(name: str, **over) -> ScoreConfig:
        base = dict(
            samples=[str(samples)],
            prompts=str(prompts),
            output_dir=str(tmp_path / name),
            reward="reward_fns:checksum",
            batch_size=1,  # chunks of 64 responses: several tasks
            cache_path=str(tmp_path / f"{name}.sqlite"),
        )
        return ScoreConfig(**(base | over))

    local = score(cfg("local"), progress=False)
    on_ray = score(cfg("ray", executor="ray", ray={"address": cluster}), progress=False)
    assert on_ray.scored_now == on_ray.unique_pairs > 64 and on_ray.reward_id == local.reward_id
    assert pq.read_table(on_ray.scores_path).to_pylist() == pq.read_table(local.scores_path).to_pylist()
    again = score(cfg("ray", executor="ray", ray={"address": cluster}), progress=False)
    assert again.scored_now == 0 and again.cached == on_ray.unique_pairs
