"""The ``transformers.Trainer`` of one stage: the cheaper loss (:mod:`.loss`) and, with ``optimizer:
continuous``, the optimizer state and the LR-schedule slice carried across stages (:mod:`.chain`)."""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

OPTIMIZER_FILE = "optimizer.pt"


class StageTrainer(Trainer):
    """``Trainer`` with three options set after construction.

    ``answer_only``: the loss of :func:`~promptintern.training.loss.answer_loss` (LM head at answer positions
    only; takes packed batches). ``schedule``: ``(offset, total)`` = this stage runs steps ``offset ..`` of one
    LR schedule over ``total`` steps (None: the stage's own schedule). ``previous_optimizer``: an optimizer
    state saved by the stage before, loaded into the fresh optimizer (a checkpoint of this stage, when resuming,
    replaces it afterwards, as it should).
    """

    answer_only: bool = False
    schedule: tuple[int, int] | None = None
    previous_optimizer: Path | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.answer_only or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from promptintern.training.loss import answer_loss

        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None  # the Trainer then divides by the accumulation steps itself
        loss = answer_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return loss

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.previous_optimizer is not None:
            import torch

            optimizer.load_state_dict(torch.load(self.previous_optimizer, weights_only=True))
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.schedule is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        from torch.optim.lr_scheduler import LambdaLR
        from transformers import get_scheduler

        offset, total = self.schedule
        optimizer = optimizer or self.optimizer
        whole = get_scheduler(
            self.args.lr_scheduler_type, optimizer=optimizer,
            num_warmup_steps=self.args.get_warmup_steps(total), num_training_steps=total,
        )  # fmt: skip
        if not hasattr(whole, "lr_lambdas"):
            raise ValueError(
                f"optimizer: continuous needs a LambdaLR schedule, not {self.args.lr_scheduler_type!r}"
            )
        factor = whole.lr_lambdas[0]
        self.lr_scheduler = LambdaLR(optimizer, lambda step: factor(offset + step))
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def save_optimizer_state(self, path: Path) -> None:
        import os

        import torch

        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.optimizer.state_dict(), tmp)
        os.replace(tmp, path)
