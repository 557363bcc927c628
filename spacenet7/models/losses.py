"""A multi-target loss: weighted smp losses per target channel, skipping ignored pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spacenet7.data.dataset import IGNORE


class MultiTargetLoss(nn.Module):
    """``sum_c channel_weight[c] * sum_k term_weight[k] * term_k(logits[:, c], target[:, c])``.

    Ignored pixels (target ``-1``) get a logit of -30 and a target of 0, so they add nothing to
    Dice/Jaccard/Focal/BCE numerators, whatever the term's own ignore support.

    Args:
        terms: binary-mode losses taking ``(logits, target)``, e.g. ``smp.losses.DiceLoss``.
        term_weights: one weight per term.
        channel_weights: one weight per target channel (footprint, boundary, contact).
        term_channels: per term, the channels it applies to (``None``: every channel), e.g.
            ``[null, null, [0]]`` for a costly IoU surrogate on the footprint alone.
    """

    def __init__(
        self,
        terms: Sequence[nn.Module],
        term_weights: Sequence[float],
        channel_weights: Sequence[float],
        term_channels: Sequence[Sequence[int] | None] | None = None,
    ) -> None:
        super().__init__()
        if len(terms) != len(term_weights):
            raise ValueError(f"{len(terms)} loss terms but {len(term_weights)} term_weights")
        channels = list(range(len(channel_weights)))
        picks = [None] * len(terms) if term_channels is None else list(term_channels)
        if len(picks) != len(terms):
            raise ValueError(f"{len(terms)} loss terms but {len(picks)} term_channels")
        for pick in picks:
            if pick is not None and not set(pick) <= set(channels):
                raise ValueError(f"term_channels {list(pick)} outside the {len(channels)} target channels {channels}")
        self.terms = nn.ModuleList(terms)
        self.term_weights = list(term_weights)
        self.channel_weights = list(channel_weights)
        self.term_channels = [set(channels) if pick is None else set(pick) for pick in picks]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum over channels; pixels with target -1 are ignored."""
        if logits.shape[1] != len(self.channel_weights):
            raise ValueError(f"model has {logits.shape[1]} output channels, loss expects {len(self.channel_weights)}")
        ignore = target == IGNORE
        logits = torch.where(ignore, torch.full_like(logits, -30.0), logits)
        target = torch.where(ignore, torch.zeros_like(target), target)
        total = logits.new_zeros(())
        for c, cw in enumerate(self.channel_weights):
            if cw == 0:
                continue
            lc, tc = logits[:, c : c + 1], target[:, c : c + 1]
            for term, tw, picked in zip(self.terms, self.term_weights, self.term_channels):
                if c in picked:
                    total = total + cw * tw * term(lc, tc)
        return total
