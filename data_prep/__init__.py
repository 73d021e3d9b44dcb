"""data_prep: multilingual text → tokenised, packed webdataset tar shards (CPU only).

Never imports `trainer` (it runs on CPU-only prep nodes). Entry points:
`python -m data_prep.shard`, `python -m data_prep.inspect`, `python -m data_prep.demo_assets`.
"""


class PrepError(RuntimeError):
    """Bad input or an unusable output folder; the message names the file/key/value."""
