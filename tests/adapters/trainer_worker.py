"""One rank of the Trainer-under-torchrun test (tests/adapters/test_multiprocess.py):
``torchrun --nproc-per-node 2 tests/adapters/trainer_worker.py OUT``. The plain transformers
``Trainer`` drives DDP (gloo) on a tiny BERT made a ``PeftModel`` by
``peft.get_peft_model(model, MoReConfig(...))``; every call that writes an adapter
(``PeftModel.save_pretrained``, what the Trainer calls to save) leaves a mark naming its rank."""

import sys
from pathlib import Path

import peft
import torch.distributed as dist
from helpers import adapter_trainer, tiny_bert

from structmat.adapters import MoReConfig


def main(out: Path) -> None:
    marks = out / "saves"
    marks.mkdir(exist_ok=True)
    save = peft.PeftModel.save_pretrained

    def marked_save(self, path, *args, **kwargs):
        rank = dist.get_rank() if dist.is_initialized() else -1
        (marks / f"rank{rank}-{Path(path).name}").write_text("")
        return save(self, path, *args, **kwargs)

    peft.PeftModel.save_pretrained = marked_save
    model = peft.get_peft_model(tiny_bert().train(), MoReConfig(nblocks=4, rank=1, task_type="SEQ_CLS"))
    trainer = adapter_trainer(
        model, out / "run", ddp_backend="gloo", ddp_find_unused_parameters=False, max_steps=4, save_steps=2
    )
    result = trainer.train()
    trainer.save_model(str(out / "final"))
    if trainer.args.process_index == 0:
        (out / "world.txt").write_text(f"{trainer.args.world_size} {result.training_loss}")
    # leave together: a rank that exits while another still talks to it aborts in gloo's threads
    # ("terminate called without an active exception", seen once in a CI run)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
