"""Transformer rules of LRP: normalization and attention by conservative propagation.

Ali et al. (2022), "XAI for Transformers: Better Explanations through Conservative Propagation":
a normalization keeps its value but holds its statistics constant (its division by the standard
deviation is a fixed scale, the mean removal stays linear), and attention keeps its value but holds
its probabilities constant (relevance flows through the values only). Under these, x * gradient is
conserved through a transformer block up to its biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sanitas.explain.op_classes import fname

def norm_constant_scale(func, args, kwargs) -> torch.Tensor:
    """A normalisation whose value is unchanged, with its mean-removal kept (linear) and its
    division by the standard deviation held constant (conservative propagation)."""
    names = {F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
             torch.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
             F.group_norm: ("input", "num_groups", "weight", "bias", "eps"),
             torch.group_norm: ("input", "num_groups", "weight", "bias", "eps"),
             F.instance_norm: ("input", "running_mean", "running_var", "weight", "bias", "use_input_stats",
                               "momentum", "eps")}
    if hasattr(F, "rms_norm"):
        names[F.rms_norm] = ("input", "normalized_shape", "weight", "eps")
    if hasattr(torch, "rms_norm"):
        names[torch.rms_norm] = ("input", "normalized_shape", "weight", "eps")
    spec = names.get(func)
    if spec is None:
        return None
    a = dict(zip(spec, args))
    a.update(kwargs)
    x = a["input"]
    w, b = a.get("weight"), a.get("bias")
    if func in (F.layer_norm, torch.layer_norm) or func is getattr(F, "rms_norm", None) \
            or func is getattr(torch, "rms_norm", None):
        shape = a["normalized_shape"]
        dims = tuple(range(-len(shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)), 0))
        eps = a.get("eps") if a.get("eps") is not None else (1e-5 if "layer" in fname(func) else torch.finfo(x.dtype).eps)
        if "rms" in fname(func):
            y = x / torch.sqrt(x.pow(2).mean(dims, keepdim=True) + eps).detach()
        else:
            centred = x - x.mean(dims, keepdim=True)
            y = centred / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps).detach()
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return y
    if func in (F.group_norm, torch.group_norm):
        g, eps = int(a["num_groups"]), a.get("eps", 1e-5)
        xs = x.reshape(x.shape[0], g, -1)
        y = ((xs - xs.mean(-1, keepdim=True)) / torch.sqrt(xs.var(-1, unbiased=False, keepdim=True) + eps).detach())
        y = y.reshape(x.shape)
    else:  # instance norm on input statistics
        if a.get("use_input_stats") is False:
            return None
        eps = a.get("eps", 1e-5)
        dims = tuple(range(2, x.dim()))
        y = (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps).detach()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if w is not None:
        y = y * w.view(shape)
    if b is not None:
        y = y + b.view(shape)
    return y


def attention_constant_probs(args, kwargs) -> torch.Tensor:
    """``scaled_dot_product_attention`` with the attention probabilities held constant."""
    spec = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    a = dict(zip(spec, args))
    a.update(kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    if a.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    scale = a.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale
    mask = a.get("attn_mask")
    if a.get("is_causal"):
        lq, lk = q.shape[-2], k.shape[-2]
        causal = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1).detach()
    return probs @ v


MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
             "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


def multi_head_attention(args, kwargs, mode):
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) written out with linear layers,
    softmax and matmul, so that the LRP rules apply to each part (run under ``mode``)."""
    a = dict(zip(MHA_ARGS, args))
    a.update(kwargs)
    if a.get("bias_k") is not None or a.get("add_zero_attn") or a.get("static_k") is not None \
            or a.get("static_v") is not None:
        raise mode._unsupported(F.multi_head_attention_forward, "bias_k/bias_v, add_zero_attn and static keys are "
                                                                 "not covered")
    q, k, v = a["query"], a["key"], a["value"]
    unbatched = q.dim() == 2
    if unbatched:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    lq, n, e = q.shape
    heads = int(a["num_heads"])
    if a.get("use_separate_proj_weight"):
        wq, wk, wv = a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]
    else:
        wq, wk, wv = a["in_proj_weight"].chunk(3)
    bq = bk = bv = None
    if a.get("in_proj_bias") is not None:
        bq, bk, bv = a["in_proj_bias"].chunk(3)
    q, k, v = F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(v, wv, bv)
    hd = e // heads

    def split(t):  # (L, N, E) -> (N, heads, L, hd)
        return t.reshape(t.shape[0], n, heads, hd).permute(1, 2, 0, 3)

    mask = a.get("attn_mask")
    kpm = a.get("key_padding_mask")
    scores_mask = None
    if mask is not None:
        m = mask if mask.dim() == 3 else mask.unsqueeze(0)
        m = m.reshape(-1, heads, m.shape[-2], m.shape[-1]) if m.shape[0] == n * heads else m.unsqueeze(1)
        scores_mask = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf")) \
            if m.dtype == torch.bool else m
    if kpm is not None:
        kp = kpm.reshape(n, 1, 1, -1)
        kp = torch.zeros(kp.shape, dtype=q.dtype, device=q.device).masked_fill(kp, float("-inf")) \
            if kp.dtype == torch.bool else kp
        scores_mask = kp if scores_mask is None else scores_mask + kp
    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(hd)
    if a.get("is_causal") and mask is None:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
    if scores_mask is not None:
        scores = scores + scores_mask
    probs = torch.softmax(scores, dim=-1)
    out = (probs @ split(v)).permute(2, 0, 1, 3).reshape(lq, n, e)
    out = F.linear(out, a["out_proj_weight"], a.get("out_proj_bias"))
    weights = None
    if a.get("need_weights", True):
        weights = probs.mean(1) if a.get("average_attn_weights", True) else probs
        weights = weights.squeeze(0) if unbatched else weights
    return (out.squeeze(1) if unbatched else out), weights
