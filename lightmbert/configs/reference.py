"""python -m lightmbert.configs.reference: the config reference (Markdown) generated from schema.py."""
from __future__ import annotations

import sys

from .loader import describe
from .schema import DistillConfig, PrepConfig

STAGES = {"data_prep (`python -m lightmbert.data_prep.shard`)": PrepConfig,
          "trainer (`python -m lightmbert.trainer.distill`)": DistillConfig}


def markdown() -> str:
    out = []
    for title, cls in STAGES.items():
        out.append(f"#### {title}\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        for key, tp, default, doc in describe(cls):
            tp, doc = tp.replace("|", r"\|"), doc.replace("|", r"\|")
            out.append(f"| `{key}` | {tp} | `{default}` | {doc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(markdown())
