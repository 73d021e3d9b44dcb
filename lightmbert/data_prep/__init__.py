"""data_prep: multilingual text (and translation pairs) → tokenised webdataset shards (CPU only).

Never imports `trainer`, `evaluation` or `demo` (it runs on CPU-only prep nodes; tested).
Entry points: `python -m lightmbert.data_prep.shard`, `python -m lightmbert.data_prep.inspect`. Also the bottom layer
the other packages share: `lightmbert.data_prep.progress` (progress with or without a terminal),
`lightmbert.data_prep.tokenizer`, `lightmbert.data_prep.manifest`, `lightmbert.data_prep.synthetic` (test/benchmark inputs).
"""


class PrepError(RuntimeError):
    """Bad input or an unusable output folder; the message names the file/key/value."""
