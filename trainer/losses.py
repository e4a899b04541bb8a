"""The vocabulary projection and cross-entropy of training, in chunks (``linear_cross_entropy``)."""

from __future__ import annotations

import weakref

import torch

from trainer.data import IGNORE

# logits per chunk: 512 MB in fp32, 512 rows of Gemma's vocabulary. Each chunk streams the whole weight
# (671 MB for Gemma) from memory twice, so many small chunks cost time on a CPU.
CHUNK_ELEMENTS = 1 << 27


class LossVocabulary:
    """The part of the vocabulary a training softmax runs over (``TrainConfig.loss_vocab``): every token of
    the training data (so every target) and the ``lowest`` ids (in Gemma's vocabulary roughly the most
    frequent pieces). On a CPU the projection onto Gemma's 262k tokens is half of a 2,048-token text step;
    a quarter of the vocabulary leaves the base model ~1.5% of its probability outside (click, README).
    ``ids``: the kept ids in order; ``remap``: vocabulary id → its place in ``ids`` (-1 where not kept)."""

    def __init__(self, used: set[int], lowest: int, vocab_size: int) -> None:
        keep = torch.zeros(vocab_size, dtype=torch.bool)
        keep[: min(lowest, vocab_size)] = True
        keep[torch.tensor(sorted(i for i in used if 0 <= i < vocab_size), dtype=torch.long)] = True
        self.ids = keep.nonzero().squeeze(1)
        self.remap = torch.full((vocab_size,), -1, dtype=torch.long)
        self.remap[self.ids] = torch.arange(len(self.ids))
        self._head: tuple | None = None  # (weak reference to the source weight, (version, storage, dtype), (rows, bias))

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None = None):
        """The output projection's rows (and bias) of this part of the vocabulary, in ``dtype`` (None: as they
        are). A frozen weight (the base's; LoRA does not train the head) is sliced and cast once and the
        copy kept while it is unchanged: sliced every step, it cost ~0.5 s of a step on 2 cores."""
        source = (weight._version, weight.data_ptr(), dtype)
        if self._head is not None and self._head[0]() is weight and self._head[1] == source:
            return self._head[2]
        ids = self.ids.to(weight.device)
        rows, part = weight[ids], None if bias is None else bias[ids]
        if dtype is not None:
            rows, part = rows.to(dtype), None if part is None else part.to(dtype)
        self._head = (weakref.ref(weight), source, (rows, part)) if not weight.requires_grad else None
        return rows, part

    def targets(self, targets: torch.Tensor) -> torch.Tensor:
        """``targets`` as places in ``ids`` (``IGNORE`` stays); a target outside the kept part is an error."""
        mapped = torch.where(targets == IGNORE, IGNORE, self.remap[targets.clamp(min=0)])
        if bool((mapped == -1).any()):
            raise ValueError("a training target lies outside the loss vocabulary")
        return mapped


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_elements: int | None = None) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets)`` (mean over the targets that are not ``IGNORE``)
    without ever holding the [tokens, vocabulary] logits. Chunks of rows are projected and reduced to
    their loss and, when a gradient is wanted, turned at once into the gradient with respect to
    ``hidden`` (softmax − one-hot, times the weight) and dropped. On Gemma's 262k vocabulary a
    2,048-token text chunk has 2 GB of fp32 logits and the plain loss keeps several buffers of that size
    alive (logits, log-softmax, their gradients); here the largest is one chunk (``CHUNK_ELEMENTS``). The same matrix
    products as the plain loss, nothing recomputed; the backward pass only scales what was kept."""
    rows = max(1, (chunk_elements or CHUNK_ELEMENTS) // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, rows)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, rows):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != IGNORE
        count = int(valid.sum())
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        total = hidden.new_zeros((), dtype=torch.float64)
        for start in range(0, hidden.shape[0], rows):
            h, t, ok = hidden[start : start + rows], targets[start : start + rows], valid[start : start + rows]
            safe = torch.where(ok, t, 0)
            logits = h @ weight.T
            # logsumexp by hand, in place: torch.logsumexp allocates a shifted copy of the chunk's logits and
            # exponentiates it, then the softmax did both again (on 2 cores ~1 s of a 2,048-row step)
            top = logits.amax(dim=-1, keepdim=True)
            picked = logits.gather(1, safe[:, None]).squeeze(1) - top.squeeze(1)
            sums = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)  # the logits become exp(logit - max)
            total += ((sums.squeeze(1).log() - picked) * ok).sum(dtype=torch.float64)
            if not (want_h or want_w):
                continue
            probs = logits.div_(sums)  # the softmax, in place
            probs[torch.arange(len(t)), safe] -= 1
            if not bool(ok.all()):
                probs *= ok[:, None]
            if want_h:
                grad_h[start : start + rows] = probs @ weight
            if want_w:
                grad_w.addmm_(probs.T, h)
        scale = 1.0 / count if count else float("nan")  # an empty mean is nan, as in cross_entropy
        ctx.which = (want_h, want_w)
        ctx.save_for_backward(*(g * scale for g in (grad_h, grad_w) if g is not None))
        return (total * scale).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad):
        saved = iter(ctx.saved_tensors)
        grad_h, grad_w = (next(saved) * grad if want else None for want in ctx.which)
        return grad_h, grad_w, None, None
