"""Hooks segkit registers with mmengine: the RNG state saved with each checkpoint, validation
pictures for TensorBoard and W&B, checkpoints replaced only after the new one is written,
channels-last memory format, validation mIoU reported to a search trial (pruning).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import (
    HOOKS,
)
from mmseg.engine.hooks import SegVisualizationHook


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Makes `resume=True` continue exactly where a killed run stopped.

    On resume mmengine re-seeds every generator and fast-forwards the sampler without
    loading the skipped batches, so the augmentations (numpy) and dropout / drop-path
    masks (torch) would differ from an uninterrupted run. Checkpoints keep the generators'
    states; numpy's and Python's are put back before the first resumed batch is loaded,
    torch's after it (creating the data loader iterator draws from torch's generator).
    Validation leaves the generators as it found them, so training draws the same
    numbers whatever the validation interval.
    """

    priority = "VERY_LOW"

    def __init__(self):
        self._saved = None
        self._before_val = None

    @staticmethod
    def _states():
        return dict(
            torch=torch.get_rng_state(), numpy=np.random.get_state(),
            python=random.getstate(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def before_val_epoch(self, runner):
        self._before_val = self._states()

    def after_val_epoch(self, runner, metrics=None):
        if self._before_val:
            torch.set_rng_state(self._before_val["torch"])
            np.random.set_state(self._before_val["numpy"])
            random.setstate(self._before_val["python"])
            self._before_val = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint["segkit_rng"] = self._before_val or self._states()

    def after_load_checkpoint(self, runner, checkpoint):
        self._saved = checkpoint.get("segkit_rng")

    def before_train(self, runner):
        if self._saved:
            np.random.set_state(self._saved["numpy"])
            random.setstate(self._saved["python"])
            self._validate_resumed(runner)

    @staticmethod
    def _validate_resumed(runner):
        """The checkpoint of a validation iteration is written before that validation runs,
        and a resumed loop starts after it: a run killed during the validation (or between
        dropping the old best checkpoint and writing the new one) would go on without it.
        Validate it again first (the same weights: the same scores), so the resumed run
        logs, and keeps as best, what an uninterrupted run does. Generators are left as
        they were (`after_val_epoch`)."""
        from mmengine.runner import IterBasedTrainLoop

        loop = runner.train_loop
        if not isinstance(loop, IterBasedTrainLoop):
            return
        done = loop.iter
        if done and runner.val_loop is not None and done >= loop.val_begin and \
                (done % loop.val_interval == 0 or done == loop.max_iters):
            runner.logger.info(f"resume: validating iteration {done} again (its checkpoint "
                               "precedes its validation)")
            runner.val_loop.run()

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._saved:
            torch.set_rng_state(self._saved["torch"])
            if self._saved["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._saved["cuda"])
            self._saved = None


@HOOKS.register_module()
class SegValVisualizationHook(SegVisualizationHook):
    """mmseg's SegVisualizationHook (`draw`, `interval`) drawing the same validation images at
    every validation (every `interval`-th, from the first), logged at the training iteration,
    so an image's pictures in TensorBoard / W&B show the model learning. mmseg's picks
    different images at each validation (the index depends on the training iteration) and
    reads every image from disk even when it draws none."""

    def after_val_iter(self, runner, batch_idx: int, data_batch: dict, outputs) -> None:
        if not self.draw or batch_idx % self.interval:
            return
        import mmcv
        from mmengine.fileio import get

        for output in outputs[:1]:
            img = mmcv.imfrombytes(get(output.img_path, backend_args=self.backend_args),
                                   channel_order="rgb")
            self._visualizer.add_datasample(f"val_{os.path.basename(output.img_path)}", img,
                                            data_sample=output, show=False, step=runner.iter)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, but an old interval checkpoint is removed only once the new
    one is written: mmengine removes it first, so a failed write (a full disk) left no
    checkpoint at all to resume from."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        keep = self.max_keep_ckpts
        if keep <= 0:
            return super()._save_checkpoint_with_step(runner, step, meta)
        self.max_keep_ckpts = -1  # mmengine's removal, before the write, is skipped
        try:
            super()._save_checkpoint_with_step(runner, step, meta)
        finally:
            self.max_keep_ckpts = keep
        before = list(self.keep_ckpt_ids)
        if not before or before[-1] != step:
            self.keep_ckpt_ids.append(step)  # a bounded deque drops the oldest itself
        while len(self.keep_ckpt_ids) > keep:
            self.keep_ckpt_ids.popleft()
        for old_step in set(before) - set(self.keep_ckpt_ids):
            old = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if is_main_process() and self.file_backend.isfile(old):
                self.file_backend.remove(old)
        runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """The model in channels-last memory format (faster convolutions on tensor cores)."""

    def before_run(self, runner) -> None:
        runner.model.to(memory_format=torch.channels_last)


@HOOKS.register_module()
class TrialPruningHook(Hook):
    """Reports each validation's mIoU to an Optuna trial (segkit.search, linked through
    SEGKIT_TRIAL: segkit.core.trials) at the training iteration (plus the trial's step
    offset), and when the study's pruner prunes the trial, stops training cleanly after that
    validation: the loop ends, the run folder keeps its checkpoints and summary, and
    `pruned.json` in it says at which step and value. Writes `trial_process.json` (host, pid)
    first, so a search that resumes the trial after a kill can stop a training left running."""

    priority = "LOW"  # after the checkpoint hook has kept the best checkpoint

    def __init__(self, storage: str, study: str, trial: int, step_offset: int = 0,
                 pruner: dict | None = None, metric: str = "mIoU"):
        self.link = dict(storage=storage, study=study, trial=int(trial),
                         step_offset=int(step_offset), pruner=pruner or {"type": "none"})
        self.number, self.step_offset, self.metric = int(trial), int(step_offset), metric
        self._trial = None

    def _open(self):
        if self._trial is None:
            from segkit.core.trials import open_trial

            self._trial = open_trial(self.link)
        return self._trial

    def before_run(self, runner) -> None:
        if is_main_process():
            import json

            from segkit.core.paths import write_text_atomic
            from segkit.core.trials import process_identity

            write_text_atomic(os.path.join(runner.work_dir, "trial_process.json"),
                              json.dumps({**process_identity(), "trial": self.number}))

    def after_val_epoch(self, runner, metrics=None) -> None:
        from mmengine.dist import broadcast_object_list, get_world_size

        decision = [None]
        if is_main_process() and metrics and self.metric in metrics:
            import json
            import warnings

            value, step = float(metrics[self.metric]), self.step_offset + runner.iter
            trial = self._open()
            with warnings.catch_warnings():  # a resumed trial reports its last step again
                warnings.simplefilter("ignore")
                trial.report(value, step)
            if trial.should_prune():
                from segkit.core.paths import write_text_atomic

                write_text_atomic(os.path.join(runner.work_dir, "pruned.json"),
                                  json.dumps({"step": step, "value": value}))
                decision = [step]
        if get_world_size() > 1:
            broadcast_object_list(decision)
        if decision[0] is not None:
            runner.logger.info(f"trial {self.number} pruned at step {decision[0]}: "
                               "training stops here")
            runner.train_loop.stop_training = True
