"""Models of the kinds users bring, built here without downloads: transformers, every activation, ...

Plain torch modules (and a Hugging Face BERT built from a config), small and
seeded, used by the tests and benchmarks to check that hwloop imports what
real exporters write.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .models import seeded


@contextlib.contextmanager
def no_fastpath() -> Iterator[None]:
    """torch's fused attention kernels (eval mode) have no ONNX export; the plain path is the same maths."""
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


class TransformerClassifier(nn.Module):
    """(batch, tokens, features) -> Linear embedding, nn.TransformerEncoder, mean over tokens, Linear head."""

    def __init__(self, features: int = 8, d: int = 16, heads: int = 2, layers: int = 2, n_classes: int = 4,
                 activation: str = "relu"):
        super().__init__()
        self.embed = nn.Linear(features, d)
        enc = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True,
                                         activation=activation)
        self.encoder = nn.TransformerEncoder(enc, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class HFEncoder(nn.Module):
    """A small Hugging Face BERT classifier built from a config (no download), fed embeddings (batch, tokens, d)."""

    def __init__(self, hidden: int = 16, layers: int = 2, heads: int = 2, n_classes: int = 3, tokens: int = 8,
                 activation: str = "gelu"):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(vocab_size=32, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=2 * hidden, max_position_embeddings=tokens, num_labels=n_classes,
                         hidden_act=activation, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         attn_implementation="eager")
        self.bert = BertForSequenceClassification(cfg).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bert(inputs_embeds=x).logits


class ActivationMLP(nn.Sequential):
    """Linear layers, each followed by one of ``activations`` (torch modules), then a Linear readout."""

    def __init__(self, activations: list[nn.Module], n_in: int = 64, hidden: int = 12, n_classes: int = 10):
        mods: list[nn.Module] = []
        n = n_in
        for act in activations:
            mods += [nn.Linear(n, hidden), act]
            n = hidden
        mods.append(nn.Linear(n, n_classes))
        super().__init__(*mods)


def build(kind: str, seed: int = 0, **kw) -> nn.Module:
    """A seeded, eval-mode instance of one of the classes above."""
    cls = {"transformer": TransformerClassifier, "hf": HFEncoder, "activations": ActivationMLP}[kind]
    with seeded(seed):
        return cls(**kw).eval()
