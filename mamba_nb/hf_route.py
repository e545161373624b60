"""The Hugging Face `datasets` route: train the same way without Lance.

Any tokenized `datasets.Dataset` (a column `input_ids`, one document per row)
is packed into blocks of `context_len + 1` tokens by `group_texts`, with
`<|endoftext|>` between documents; consecutive blocks share one token, exactly
as the Lance windows of `sampler.py` do, so no next-token pair is lost at a
block edge. FIM is applied per batch in the collate function (`FimCollator`),
which yields the same batch dict as `windows.make_loader`:

    loader = DataLoader(group_texts(tokenized, 256, eot), batch_size=8, shuffle=True,
                        collate_fn=FimCollator(tokenizer, WindowConfig(context_len=256)))

What this route does not do, compared with the Lance route: block edges are
fixed (no per-epoch offset), and `group_texts` packs each `map` batch of
documents on its own, so up to `context_len` tokens at the end of every
`batch_size` documents are dropped (the usual `group_texts` trade-off). Each
block's row number, its column `block`, keys its FIM draws and is what the batch
calls `starts`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mamba_nb.config import WindowConfig
from mamba_nb.fim import FimTransform, make_batch


def group_texts(dataset, context_len: int, eot_id: int, batch_size: int = 1000, num_proc: Optional[int] = None):
    """Pack a tokenized dataset into blocks of `context_len + 1` tokens → Dataset(input_ids, block).

    A document that does not already end with `eot_id` gets one appended.
    """
    if "input_ids" not in dataset.column_names:
        raise ValueError(
            f"the dataset has columns {dataset.column_names}, no 'input_ids'; tokenize it first, e.g. "
            "ds.map(lambda b: tokenizer(b['content']), batched=True)"
        )
    if context_len < 1:
        raise ValueError(f"context_len={context_len} must be at least 1")

    def pack(batch):
        docs = [np.asarray(ids, dtype=np.int64) for ids in batch["input_ids"]]
        docs = [d if len(d) and d[-1] == eot_id else np.append(d, eot_id) for d in docs]
        ids = np.concatenate(docs) if docs else np.empty(0, np.int64)
        n = max(0, (len(ids) - 1) // context_len)  # blocks of context_len + 1, context_len apart
        return {"input_ids": [ids[i * context_len : i * context_len + context_len + 1] for i in range(n)]}

    grouped = dataset.map(pack, batched=True, batch_size=batch_size, num_proc=num_proc,
                          remove_columns=dataset.column_names, desc="group_texts")
    if len(grouped) == 0:
        raise ValueError(
            f"no block of context_len + 1 = {context_len + 1} tokens fits in the dataset ({len(dataset)} documents); "
            "lower context_len or raise batch_size (documents packed together)"
        )
    return grouped.add_column("block", np.arange(len(grouped), dtype=np.int64))


class FimCollator:
    """collate_fn: rows of `group_texts` → the batch dict, FIM applied (draws keyed by seed, epoch, block)."""

    def __init__(self, tokenizer, cfg: WindowConfig, epoch: int = 0):
        self.cfg = cfg
        self.epoch = int(epoch)
        self.fim = FimTransform.from_config(tokenizer, cfg)

    def set_epoch(self, epoch: int) -> None:
        """New FIM draws for a new epoch (call it as you would `sampler.set_epoch`)."""
        self.epoch = int(epoch)

    def __call__(self, rows: list[dict]) -> dict:
        want = self.cfg.context_len + 1
        lengths = {len(r["input_ids"]) for r in rows}
        if lengths != {want}:
            raise ValueError(
                f"rows hold {sorted(lengths)} tokens but context_len={self.cfg.context_len} needs {want}; "
                f"pack the dataset with group_texts(dataset, {self.cfg.context_len}, eot_id)"
            )
        windows = np.stack([np.asarray(r["input_ids"], dtype=np.int64) for r in rows])
        starts = np.array([r.get("block", i) for i, r in enumerate(rows)], dtype=np.int64)
        return make_batch(self.fim(windows, starts, self.epoch), starts)
