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


class InvertedResidual(nn.Module):
    """mobilenet_v2's block: 1x1 expansion, depthwise 3x3 (groups = channels), 1x1 projection, BatchNorms, ReLU6."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: int = 6):
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.body = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetBlocks(nn.Sequential):
    """A mobilenet_v2-style network on (3, size, size): stem, inverted residual blocks, pooling, Linear head.
    ``blocks``: (c_out, stride) per block."""

    def __init__(self, blocks=((16, 1), (24, 2), (24, 1), (32, 2)), stem: int = 16, n_classes: int = 10,
                 expand: int = 6):
        mods: list[nn.Module] = [nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6()]
        c = stem
        for c_out, stride in blocks:
            mods.append(InvertedResidual(c, c_out, stride, expand))
            c = c_out
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes)]
        super().__init__(*mods)


class ConvKinds(nn.Module):
    """Conv2d, then a grouped ConvTranspose2d (stride 2, output padding), then a Conv3d over a stacked axis."""

    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.conv3d = nn.Conv3d(1, 2, (2, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.head = nn.Linear(2 * 5 * 6 * 6, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.up(torch.tanh(self.conv(x))))        # (B, 6, 12, 12)
        h = torch.nn.functional.leaky_relu(self.conv3d(h.unsqueeze(1)), 0.2)   # (B, 2, 5, 6, 6)
        return self.head(h.flatten(1))


class EinsumNet(nn.Module):
    """Linear maps written as einsum, weight on either side: per token, then over the token axis."""

    def __init__(self, tokens: int = 6, features: int = 8, n_classes: int = 4):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(features, 12) / features ** 0.5)
        self.w2 = nn.Parameter(torch.randn(3, tokens) / tokens ** 0.5)
        self.w3 = nn.Parameter(torch.randn(n_classes, 36) / 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.einsum("btk,kn->btn", x, self.w1))       # per token
        h = torch.einsum("st,btn->bsn", self.w2, h)                    # mixes tokens (weight first)
        return torch.einsum("bk,ck->bc", h.flatten(1), self.w3)


def build(kind: str, seed: int = 0, **kw) -> nn.Module:
    """A seeded, eval-mode instance of one of the classes above."""
    cls = {"transformer": TransformerClassifier, "hf": HFEncoder, "activations": ActivationMLP,
           "mobilenet": MobileNetBlocks, "convs": ConvKinds, "einsum": EinsumNet, "sequence": SequenceClassifier,
           "lenet": LeNetAvg}[kind]
    with seeded(seed):
        return cls(**kw).eval()


class HFTokens(nn.Module):
    """The Hugging Face BERT classifier fed token ids and an attention mask (two integer graph inputs)."""

    def __init__(self, **kw):
        super().__init__()
        self.inner = HFEncoder(**kw)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inner.bert(input_ids=ids, attention_mask=mask).logits


class SequenceClassifier(nn.Module):
    """(batch, time, features) -> an LSTM / GRU / RNN (optionally bidirectional, stacked) -> Linear on the last step."""

    def __init__(self, cell: str = "LSTM", features: int = 6, hidden: int = 12, layers: int = 1,
                 bidirectional: bool = False, n_classes: int = 4):
        super().__init__()
        cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[cell]
        self.rnn = cls(features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class LeNetAvg(nn.Sequential):
    """LeNet-5 as LeCun built it, with average pooling (subsampling), for 1 x size x size inputs."""

    def __init__(self, size: int = 12, n_classes: int = 10, hidden: int = 32, pool: str = "avg",
                 first: type[nn.Module] = nn.ReLU):
        side = ((size // 2) - 4) // 2
        kind = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pool]     # max: the modern variant
        super().__init__(nn.Conv2d(1, 6, 5, padding=2), first(), kind(2),
                         nn.Conv2d(6, 16, 5), nn.Tanh(), kind(2), nn.Flatten(),
                         nn.Linear(16 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
