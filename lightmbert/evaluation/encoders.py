"""Load an encoder directory and turn texts into L2-normalised sentence vectors."""
from __future__ import annotations

import torch

from .pooling import mean_pool


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_kwargs(hub_kernels: bool = False) -> dict:
    """Keyword arguments for every `from_pretrained` of a model of ours.

    transformers ≥ 5 "kernelizes" a model at load time by default when Hugging Face's `kernels`
    package is installed (transformers 5.25 requires it): layers get forwards downloaded from
    the hub at run time. Our runs are offline and must compute the same on every machine, so we
    pass `use_kernels=False` unless the user opts in (`teacher.hub_kernels: true`); releases
    without that option get nothing."""
    from transformers import PreTrainedModel
    if not (hasattr(PreTrainedModel, "set_use_kernels") or hasattr(PreTrainedModel, "use_kernels")):
        return {}
    return {"use_kernels": bool(hub_kernels)}


def load_encoder(path: str, device: str = "cpu"):
    """(model in eval mode on `device`, tokenizer) of any HF encoder directory."""
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    try:
        model = AutoModel.from_pretrained(path, add_pooling_layer=False, **load_kwargs())
    except TypeError:
        model = AutoModel.from_pretrained(path, **load_kwargs())
    return model.to(device).eval(), tok


def truncated(path: str, num_layers: int, device: str = "cpu"):
    """The 'student before distillation': the model's embeddings + its bottom layers."""
    model, tok = load_encoder(path, device)
    model.encoder.layer = model.encoder.layer[:num_layers]
    model.config.num_hidden_layers = num_layers
    return model, tok


@torch.no_grad()
def encode(model, tokenizer, texts: list[str], prefix: str = "", batch_size: int = 64,
           max_length: int = 128, progress=None, layers: tuple[int, ...] | None = None):
    """L2-normalised mean-pooled last hidden states, [N, d] float32. With `layers` (indices
    into hidden_states, 0 = embeddings): {layer: [N, d]} from one forward pass — the teacher
    and its truncation (the student before distillation) for the price of the teacher.
    `progress`: a lightmbert.data_prep.progress.Progress advanced by the texts encoded."""
    out: dict[int | None, list] = {k: [] for k in (layers or (None,))}
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
    for a in range(0, len(texts), batch_size):
        idx = order[a:a + batch_size]
        batch = tokenizer([prefix + texts[i] for i in idx], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        res = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=layers is not None)
        for k in out:
            h = res.last_hidden_state if k is None else res.hidden_states[k]
            out[k].append((torch.nn.functional.normalize(mean_pool(h, batch["attention_mask"]), dim=-1), idx))
        if progress is not None:
            progress.update(len(idx))
    embs = {}
    for k, parts in out.items():
        emb = torch.empty(len(texts), parts[0][0].shape[1]) if parts else torch.empty(0, 0)
        for e, idx in parts:
            emb[idx] = e.float().cpu()
        embs[k] = emb
    return embs if layers is not None else embs[None]


def embedder(model, tokenizer, prefix: str, batch_size: int, progress, layers):
    """texts → {key: [N, d]}: key None (last layer) or one key per requested layer."""
    def embed(texts: list[str]) -> dict:
        got = encode(model, tokenizer, texts, prefix, batch_size, progress=progress, layers=layers)
        return got if layers is not None else {None: got}
    return embed
