import json
import multiprocessing as mp
from pathlib import Path

from lightmbert.data_prep.manifest import write_json


def _writer(path: str, k: int) -> None:
    for i in range(300):
        write_json(Path(path), {"writer": k, "i": i})


def test_concurrent_writers_of_one_json_file_never_fail(tmp_path):
    """Slurm array tasks write shards/.identity.json at once: every write completes and the
    file is always one whole JSON document (with a shared temporary name a writer's rename
    failed with FileNotFoundError)."""
    path = tmp_path / ".identity.json"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert json.loads(path.read_text())["i"] == 299
    assert not list(tmp_path.glob("*.tmp"))
