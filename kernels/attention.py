"""
Fused causal attention.

attention_reference is the plain-PyTorch path (CPU, and the test oracle).
"""
import math

import torch


def attention_reference(q, k, v, *, causal=True, sm_scale=None, key_start=None):
    """Attention in fp32 math. q (B, H, Tq, D); k, v (B, H, Tk, D) with Tq <= Tk.
    The queries are the last Tq positions of the Tk keys (bottom-right-aligned causal mask).
    key_start (B,) int: keys at positions < key_start[b] are invisible to row b (left padding).
    A query that sees no key outputs zeros."""
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    att = (q.float() @ k.float().transpose(-2, -1)) * sm_scale  # (B, H, Tq, Tk)
    visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        # query i sits at absolute position Tk - Tq + i
        visible = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
    visible = visible[None, None]  # (1, 1, Tq, Tk)
    if key_start is not None:
        keys_on = torch.arange(Tk, device=q.device)[None, :] >= key_start.to(q.device)[:, None]  # (B, Tk)
        visible = visible & keys_on[:, None, None, :]
    seen = visible.any(dim=-1, keepdim=True)  # rows that see at least one key
    # a row that sees no key gets zeros (and zero gradients) instead of the NaN of softmax(-inf, ...)
    att = att.masked_fill(~visible, float("-inf")).masked_fill(~seen, 0.0)
    att = torch.softmax(att, dim=-1) * seen
    return (att @ v.float()).to(q.dtype)
