"""BERT-style packing of token segments into sequences of at most `seq_len` tokens.

Each sequence is `[CLS] prefix content [SEP]` (or `<s> ... </s>`). In `pack` mode the
consecutive segments of one document share a sequence until the next one does not fit;
sequences never cross documents. In `segment` mode every segment gets its own sequence.
A segment longer than the room left for content is split into pieces (counted), never cut.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np


class Packer:
    def __init__(self, seq_len: int, cls_id: int, sep_id: int, prefix_ids: Sequence[int] = (),
                 mode: str = "pack"):
        if mode not in ("pack", "segment"):
            raise ValueError(f"packing mode must be 'pack' or 'segment', got {mode!r}")
        self.head = [int(cls_id), *map(int, prefix_ids)]
        self.sep = int(sep_id)
        self.room = seq_len - len(self.head) - 1
        if self.room < 1:
            raise ValueError(f"seq_len {seq_len} leaves no room for content after "
                             f"{len(self.head)} start/prefix tokens and the end token")
        self.mode = mode
        self.ids: list[int] = []       # all sequences, concatenated
        self.lengths: list[int] = []   # one entry per sequence
        self.stats: Counter = Counter()
        self._buf: list[int] = []

    def _emit(self, content: list[int]) -> None:
        self.ids += self.head
        self.ids += content
        self.ids.append(self.sep)
        self.lengths.append(len(self.head) + len(content) + 1)

    def _flush(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf = []

    def add_document(self, segments: Iterable[list[int]]) -> None:
        room = self.room
        for seg in segments:
            if not seg:
                self.stats["empty_segments"] += 1  # text that tokenises to nothing
                continue
            self.stats["segments"] += 1
            self.stats["content_tokens"] += len(seg)
            if len(seg) > room:
                self.stats["split_segments"] += 1
                pieces = [seg[i:i + room] for i in range(0, len(seg), room)]
            else:
                pieces = [seg]
            for piece in pieces:
                if self.mode == "segment":
                    self._emit(piece)
                    continue
                if self._buf and len(self._buf) + len(piece) > room:
                    self._flush()
                if self._buf:
                    self._buf += piece
                else:
                    self._buf = list(piece)
            if self.mode == "pack" and len(self._buf) == room:
                self._flush()
        self._flush()

    def arrays(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """(flat ids, lengths) of everything packed so far."""
        return np.asarray(self.ids, dtype=dtype), np.asarray(self.lengths, dtype=np.int64)


def unpack(ids: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Split a flat id array back into its sequences."""
    return np.split(ids, np.cumsum(lengths)[:-1]) if len(lengths) else []
