"""Memory a MoRe layer keeps for backward with dropout on the adapter's input (LoRA's placement,
structmat's default) or output (the MoRe reference's): ``python benchmarks/dropout_memory.py``.

Counts the bytes of every tensor autograd saves during one forward (``saved_tensors_hooks``),
storage by storage, so a tensor saved twice counts once. Deterministic; no timing.
"""

import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import command_line, header  # noqa: E402

from structmat.adapters import MoReConfig, apply_more  # noqa: E402


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(storages.values())


def main() -> None:
    tokens, in_f, out_f = 4096, 768, 3072
    print(header(command_line(), "dropout on the input (LoRA's placement, structmat's default), same run"))
    print(f"| dropout position | saved for backward (MB), {tokens} tokens, {in_f}x{out_f}, rank 8, p=0.1 |")
    print("|---|---|")
    for position in ("input", "output"):
        torch.manual_seed(0)
        layer = nn.Sequential(nn.Linear(in_f, out_f))
        cfg = MoReConfig(target_modules=["0"], nblocks=4, rank=8, dropout=0.1, dropout_position=position)
        model = apply_more(layer, config=cfg).train()
        x = torch.randn(tokens, in_f, requires_grad=False)
        print(f"| {position} | {saved_bytes(model, x) / 1e6:.1f} |")


if __name__ == "__main__":
    main()
