"""Bring your own Hugging Face encoder: a BERT-style sentence encoder, nothing downloaded.

    layerpilot profile  --model examples/hf_encoder.py:build
    layerpilot evaluate --model examples/hf_encoder.py:build --recovery short \\
        --strategy '{"bert.encoder.layer.3": {"skip": true}, "*": {"precision": "int8"}}'
    layerpilot search   --model examples/hf_encoder.py:build --budget 100
    layerpilot export   runs/<dir> --format onnx-int8 --out enc/

The model is ``transformers.BertModel`` built from a config (a MiniLM-like shape scaled to two
CPU cores: 4 layers, hidden 256, 4 heads, sequence 64) and trained *in place* with masked-
language modelling on a synthetic corpus (sentences drawn from eight topics over a Zipf
vocabulary), so its attention and its embeddings mean something. Training takes about a
few minutes on one core, once: the weights are cached under ``$LAYERPILOT_CACHE/examples`` (read
back with ``torch.load(weights_only=True)``).

What layerpilot sees (``profile``): each ``BertLayer`` is a unit that can be skipped, each
self-attention a unit whose heads are pruned together across query/key/value and the output
projection, each FFN a prunable width, every Linear a precision. The pooler is not a unit:
this forward returns mean-pooled hidden states, so the exported graph drops it.

The workload is an *embedding* model: its targets are the original model's embeddings and its
metric is the mean cosine similarity to them, in percent (100 = unchanged). A bound of 2
points is cosine ≥ 0.98. Recovery distils by feature matching (``runners.recovery.task_loss``
picks it because the targets are not class indices).

With your own model, ``build`` would load your checkpoint (``BertModel.from_pretrained`` of a
local directory) and tokenise your sentences; the rest stays as it is.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from envs.workloads import DataSplit, Workload

VOCAB, LENGTH, TOPICS = 2000, 64, 8
HIDDEN, LAYERS, HEADS, FFN = 256, 4, 4, 1024
TRAIN_STEPS, BATCH = 300, 32
PAD, MASK, SPECIAL = 0, 1, 4


def config():  # -> transformers.BertConfig (imported lazily: an optional dependency)
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",  # plain matmuls: exportable and prunable
    )


class SentenceEncoder(nn.Module):
    """``BertModel`` → masked mean of the last hidden states (a sentence embedding)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config(), add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def corpus(n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` synthetic sentences: each picks a topic, whose Zipf distribution over the
    vocabulary (a topic-specific permutation) it mixes with shared function words; lengths
    12-64, padded."""
    rng = np.random.default_rng(seed)
    words = np.arange(SPECIAL, VOCAB)
    zipf = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    zipf /= zipf.sum()
    perms = [np.random.default_rng(100 + t).permutation(words) for t in range(TOPICS)]
    function_words = words[:40]
    ids = np.full((n, LENGTH), PAD, dtype=np.int64)
    mask = np.zeros((n, LENGTH), dtype=np.int64)
    for i in range(n):
        topic, length = rng.integers(TOPICS), rng.integers(12, LENGTH + 1)
        content = rng.choice(perms[topic], size=length, p=zipf)
        glue = rng.choice(function_words, size=length)
        ids[i, :length] = np.where(rng.random(length) < 0.3, glue, content)
        mask[i, :length] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def train_mlm(encoder: SentenceEncoder, data: dict[str, torch.Tensor], steps: int) -> None:
    """Masked-language modelling in place: 15 % of the real tokens masked, a tied-free linear
    head predicting them."""
    head = nn.Linear(HIDDEN, VOCAB)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    encoder.train()
    n = len(data["input_ids"])
    for _ in range(steps):
        idx = torch.randint(0, n, (BATCH,), generator=generator)
        ids, mask = data["input_ids"][idx], data["attention_mask"][idx]
        chosen = (torch.rand(ids.shape, generator=generator) < 0.15) & (mask == 1)
        hidden = encoder.bert(
            input_ids=ids.masked_fill(chosen, MASK), attention_mask=mask
        ).last_hidden_state
        loss = nn.functional.cross_entropy(head(hidden[chosen]), ids[chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    encoder.eval()


def cosine(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean cosine similarity of each embedding to the original model's, in percent."""
    num = (outputs * targets).sum(1)
    den = np.linalg.norm(outputs, axis=1) * np.linalg.norm(targets, axis=1) + 1e-12
    return float(100.0 * (num / den).mean())


def _cache_file() -> Path:
    import transformers

    from envs.workloads.cache import default_cache_dir

    source = Path(__file__).read_bytes()
    versions = f"{torch.__version__}|{transformers.__version__}".encode()
    key = hashlib.sha256(source + versions).hexdigest()[:16]
    return default_cache_dir() / "examples" / f"hf_encoder-{key}.pt"


def trained_encoder() -> SentenceEncoder:
    """The encoder, trained on first use and cached (weights only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = SentenceEncoder().eval()
    path = _cache_file()
    if path.exists():
        encoder.load_state_dict(torch.load(path, weights_only=True))
        return encoder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        train_mlm(encoder, corpus(4096, seed=1), TRAIN_STEPS)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(encoder.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return encoder


def build() -> Workload:
    """The bring-your-own entry point: the trained encoder judged on its own embeddings."""
    encoder = trained_encoder()
    tokens = corpus(640, seed=2)
    with torch.no_grad():
        embeddings = torch.cat(
            [
                encoder(tokens["input_ids"][i : i + 128], tokens["attention_mask"][i : i + 128])
                for i in range(0, 640, 128)
            ]
        )

    def part(s: slice) -> DataSplit:
        return DataSplit({k: v[s] for k, v in tokens.items()}, embeddings[s])

    return Workload(
        name="hf-bert-encoder",
        model=encoder,
        example_input={k: v[:1] for k, v in tokens.items()},
        train=part(slice(0, 512)),
        eval=part(slice(512, 640)),
        metric=cosine,
        description=(
            f"BERT sentence encoder ({LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, "
            f"sequence {LENGTH}), cosine to the original embeddings (examples/hf_encoder.py)"
        ),
    )


if __name__ == "__main__":
    wl = build()
    params = sum(p.numel() for p in wl.model.parameters())
    print(f"{wl.name}: {params / 1e6:.1f} M parameters, {len(wl.train)} train / {len(wl.eval)}")
