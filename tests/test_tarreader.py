"""lightmbert.data_prep.tarreader: reads exactly what webdataset reads, from a path, a `pipe:` command or
HTTP, and turns every kind of damage into an error that names the shard."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import random
import tarfile
import threading

import numpy as np
import pytest
import webdataset as wds

from lightmbert.data_prep.tarreader import ShardError, load_shard, npy_array
from lightmbert.data_prep.tarwriter import ShardStream, npy_bytes

SEED = int(os.environ.get("LIGHTMBERT_TEST_SEED") or int.from_bytes(os.urandom(2), "little"))


@pytest.fixture
def shard(tmp_path):
    rng = random.Random(SEED)
    samples = []
    w = ShardStream(str(tmp_path / "s-%06d.tar"), 1000)
    for i in range(57):
        ids = np.array([rng.randrange(1 << 20) for _ in range(rng.randint(1, 130))], dtype=np.uint32)
        samples.append((f"de-{i:09d}", ids))
        w.write({"__key__": f"de-{i:09d}", "input_ids.npy": npy_bytes(ids), "lang.txt": b"de"})
    w.close()
    path = tmp_path / "s-000000.tar"
    return path, samples


def test_reads_what_webdataset_reads(shard):
    path, samples = shard
    ours = [(k, npy_array(f["input_ids.npy"], str(path)).tolist(), bytes(f["lang.txt"]))
            for k, f in load_shard(str(path), 57, hashlib.sha256(path.read_bytes()).hexdigest())]
    theirs = [(s["__key__"], s["input_ids.npy"].tolist(), s["lang.txt"].encode())
              for s in wds.WebDataset(str(path), shardshuffle=False, empty_check=False).decode()]
    assert ours == theirs == [(k, ids.tolist(), b"de") for k, ids in samples], f"seed {SEED}"


@pytest.mark.parametrize("cut", ["half", "mid_header", "mid_data", "no_end_blocks", "one_end_block"])
def test_a_truncated_shard_is_named_not_read_silently(shard, tmp_path, cut):
    path, _ = shard
    data = path.read_bytes()
    # where the archive's members end: the two zero blocks after the last member
    end = len(data.rstrip(b"\0"))
    end += -end % 512
    at = {"half": len(data) // 2, "mid_header": 512 * 7 + 100, "mid_data": 512 * 7 + 600,
          "no_end_blocks": end, "one_end_block": end + 512}[cut]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[:at])
    with pytest.raises(ShardError, match=rf"{bad}: truncated"):
        load_shard(str(bad), 57)


def test_garbled_bytes_count_and_hash(shard, tmp_path):
    path, _ = shard
    data = bytearray(path.read_bytes())
    garbled = bytearray(data)
    # the 3rd member's header: where it sits depends on the (seeded) sample sizes, so ask tarfile
    with tarfile.open(path) as tf:
        third = tf.getmembers()[2].offset
    garbled[third + 3] ^= 0x55             # inside that header's name field
    (tmp_path / "g.tar").write_bytes(garbled)
    with pytest.raises(ShardError, match="garbled: a tar header's checksum does not match"):
        load_shard(str(tmp_path / "g.tar"))
    with pytest.raises(ShardError, match=r"holds 57 samples, the manifest says 58"):
        load_shard(str(path), 58)
    payload = bytearray(data)
    payload[512 + 200] ^= 1                # inside the 1st sample's token ids: only the hash sees it
    (tmp_path / "p.tar").write_bytes(payload)
    assert len(load_shard(str(tmp_path / "p.tar"), 57)) == 57
    with pytest.raises(ShardError, match="sha256 .* differs from the manifest's"):
        load_shard(str(tmp_path / "p.tar"), 57, hashlib.sha256(data).hexdigest())
    with pytest.raises(ShardError, match=r"missing.tar"):
        load_shard(str(tmp_path / "missing.tar"))


def serve(root):
    """A local HTTP server for `root` on 127.0.0.1 (a thread; stopped by the caller)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_pipe_and_http_urls(shard):
    path, samples = shard
    want = [ids.tolist() for _, ids in samples]

    def ids(url):
        return [npy_array(f["input_ids.npy"], url).tolist() for _, f in load_shard(url, 57)]
    assert ids(f"pipe:cat {path}") == want
    with pytest.raises(ShardError, match=r"pipe:cat /nonexistent/x.tar"):
        load_shard("pipe:cat /nonexistent/x.tar")
    srv = serve(path.parent)
    try:
        url = f"http://127.0.0.1:{srv.server_port}/{path.name}"
        assert ids(url) == want
        with pytest.raises(ShardError, match=r"http://127.0.0.1:\d+/nope.tar"):
            load_shard(f"http://127.0.0.1:{srv.server_port}/nope.tar")
    finally:
        srv.shutdown()
