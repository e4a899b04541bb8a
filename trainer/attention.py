"""Attention over packed rows: the explicit 4-D masks of a packed row (each sequence sees the shared
prefix and itself, within a sliding window where the layer has one), and ``blocked_attention``, the same
sdpa attention computed only over the key blocks each block of queries can see."""

from __future__ import annotations

from agent.errors import SwespotError


def packed_attention_masks(config, position_ids, segment_ids, dtype) -> dict:
    """The attention masks of a packed row (``batches.collate_packed``), one per layer type, as the model's
    forward takes them ready-made: a query sees a key when the key is on the shared prefix or in its own
    segment, at a position not after its own, and, on sliding-window layers, less than the window back.
    Explicit 4-D masks run on every device with eager and sdpa attention (varlen kernels are GPU-only)."""
    import torch

    pos_q, pos_k = position_ids[:, None, :, None], position_ids[:, None, None, :]
    seg_q, seg_k = segment_ids[:, None, :, None], segment_ids[:, None, None, :]
    visible = (pos_k <= pos_q) & ((seg_k == seg_q) | (seg_k == 0))
    masks = {}
    for kind in set(getattr(config, "layer_types", None) or ["full_attention"]):
        mask = visible
        if kind == "sliding_attention":
            mask = visible & (pos_k > pos_q - config.sliding_window)
        elif kind != "full_attention":
            raise SwespotError(f"packing does not know attention layers of type {kind!r}; train with packing off")
        if attention_kind(config) == "eager":  # additive
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        masks[kind] = mask
    return masks


def attention_kind(config) -> str:
    """The model's attention implementation, seen through ``blocked_attention``'s wrapper."""
    impl = config._attn_implementation or "eager"
    return impl.rsplit(":", 1)[-1] if impl.startswith(BLOCKED) else impl


def packable(model) -> bool:
    """Whether the model takes explicit 4-D masks: eager or sdpa attention (not flash/flex kernels)."""
    return attention_kind(model.config) in ("eager", "sdpa")


# ---- attention over the visible blocks only -------------------------------------------------------
BLOCKED = "swespot-blocked"
BLOCK = 256  # query positions per block of ``blocked_attention`` (0: off, the model's own attention)


def _blocked(block: int):
    """An sdpa attention function that attends per block of ``block`` queries over the keys that block
    can see (from the first key block holding a visible key to the last). A 4-D mask (the packed one,
    or the model's own) says what is visible; a key outside the range is masked for every query of the
    block, so the result is the same attention without the scores the mask would throw away: on a
    2,048-token row about half of them on causal layers and three quarters on Gemma 3's 512-token
    sliding windows. Queries and keys are split once (``split``/``cat`` backward is a copy per block;
    slicing the full tensors per block would zero-fill a full-size gradient each time)."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    def attend(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        length = query.shape[2]
        if attention_mask is None or attention_mask.dim() != 4 or length <= block or key.shape[2] != length \
                or kwargs.get("softcap") is not None or kwargs.get("output_attentions"):
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        if attention_mask.dtype == torch.bool:
            visible = attention_mask.any(dim=1).any(dim=0)  # [queries, keys], over batch and heads
        else:  # additive: visible where not (close to) the dtype's minimum
            visible = (attention_mask > torch.finfo(attention_mask.dtype).min / 2).any(dim=1).any(dim=0)
        groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        keys, values = key.split(block, dim=2), value.split(block, dim=2)
        outs = []
        for i, q in enumerate(query.split(block, dim=2)):
            start = i * block
            cols = visible[start : start + q.shape[2]].any(dim=0).nonzero()
            first, last = (int(cols[0]) // block, int(cols[-1]) // block + 1) if cols.numel() else (i, i + 1)
            k = keys[first] if last - first == 1 else torch.cat(keys[first:last], dim=2)
            v = values[first] if last - first == 1 else torch.cat(values[first:last], dim=2)
            mask = attention_mask[:, :, start : start + q.shape[2], first * block : first * block + k.shape[2]]
            outs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling))
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None  # [batch, queries, heads, head_dim]

    return attend


def blocked_attention(model, block: int | None = None) -> bool:
    """Switch ``model`` from sdpa attention to ``_blocked``: same attention, computed only where the
    mask lets a block of queries see (``block`` queries at a time, default ``BLOCK``). Returns whether
    it was switched (eager attention, slower on Gemma here, and other kernels are left alone)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    block = BLOCK if block is None else block
    if not block or attention_kind(model.config) != "sdpa":
        return False
    name = f"{BLOCKED}-{block}:sdpa"
    ALL_ATTENTION_FUNCTIONS.register(name, _blocked(block))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the model's own masks
    model.set_attn_implementation(name)
    return True
