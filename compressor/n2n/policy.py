"""N2N's two policies: a bidirectional LSTM that marks each layer keep/remove, and an autoregressive LSTM that
picks a width scale per remaining layer; both sample actions and give their log-probabilities for REINFORCE."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.n2n.layers import PAPER_SCALES, STATE_DIM

if TYPE_CHECKING:
    pass

# ---------------------------------------------------------------------------------------------------- policies


class RemovalPolicy(nn.Module):
    """Stage 1: a 2-layer bidirectional LSTM over the layer states, then keep/remove logits per layer.

    Action 1 means keep. Layers outside the decision mask are always kept and add nothing to the log-probability.
    """

    def __init__(self, hidden: int = 30, num_layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(STATE_DIM, hidden, num_layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states (B, L, STATE_DIM) → logits (B, L, 2)."""
        return self.head(self.lstm(states)[0])

    @torch.no_grad()
    def sample(self, states: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` action sequences (n, L) of 0 (remove) / 1 (keep)."""
        probs = torch.softmax(self(states.expand(n, -1, -1)), -1)
        actions = torch.multinomial(probs.reshape(-1, 2), 1, generator=generator).reshape(n, -1)
        return torch.where(mask, actions, torch.ones_like(actions))

    def log_prob(self, states: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Sum of log π(a_t) over the decision layers, per sequence: (n,)."""
        logp = torch.log_softmax(self(states.expand(len(actions), -1, -1)), -1)
        picked = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return (picked * mask).sum(-1)


class ShrinkPolicy(nn.Module):
    """Stage 2: an autoregressive 2-layer LSTMCell picking a width-scale index per layer.

    Each step reads the layer's state and the scale chosen for the previous layer (the paper feeds the scaled
    state back); outside the mask the scale is forced to 1.0 and adds nothing to the log-probability.
    """

    def __init__(self, scales: Sequence[float] = PAPER_SCALES, hidden: int = 30, num_layers: int = 2):
        super().__init__()
        if 1.0 not in scales:
            raise CompressorError("n2n: the scale set must contain 1.0 (the width of layers that are not shrunk)")
        self.register_buffer("scales", torch.tensor([float(s) for s in scales]))
        sizes = [STATE_DIM + 1] + [hidden] * num_layers
        self.cells = nn.ModuleList(nn.LSTMCell(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(hidden, len(scales))

    def _unroll(self, states: torch.Tensor, mask: torch.Tensor, n: int, actions: torch.Tensor | None,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        keep_index = int((self.scales == 1.0).nonzero()[-1])
        h = [torch.zeros(n, c.hidden_size) for c in self.cells]
        c = [torch.zeros(n, c.hidden_size) for c in self.cells]
        prev = torch.ones(n, 1)
        chosen, total = [], torch.zeros(n)
        for t in range(states.shape[0]):
            x = torch.cat([states[t].expand(n, -1), prev], 1)
            for i, cell in enumerate(self.cells):
                h[i], c[i] = cell(x, (h[i], c[i]))
                x = h[i]
            logp = torch.log_softmax(self.head(x), -1)
            if actions is None:
                a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            else:
                a = actions[:, t]
            a = a if mask[t] else torch.full_like(a, keep_index)
            if mask[t]:
                total = total + logp.gather(1, a.unsqueeze(1)).squeeze(1)
            chosen.append(a)
            prev = self.scales[a].unsqueeze(1)
        return torch.stack(chosen, 1), total

    @torch.no_grad()
    def sample(self, states: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sequences (n, L) of scale indices."""
        return self._unroll(states, mask, n, None, generator)[0]

    def log_prob(self, states: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self._unroll(states, mask, len(actions), actions, None)[1]
