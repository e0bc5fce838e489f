"""MTT's experts (the prerequisite ``mtt_expert``, declared in :mod:`hpcdd.specs.mtt`) and the
buffer a distillation reads them from.

One expert is one prerequisite job (one Slurm array task): a fresh ``net`` trained on the real
data as the official ``buffer.py`` does (SGD without momentum or weight decay, lr 0.01, batches
of 256 from a shuffled epoch, the last one smaller, each batch augmented by DSA with per-sample
parameters). **One step is one epoch.** After each epoch the parameters go atomically to
``epochs/epoch-<e>.pt`` (epoch 0 is the initialisation), and the job checkpoints at every step
(``checkpoint_every = 1``), so a killed expert resumes at its last finished epoch: a file is
either complete or absent, a redone epoch rewrites its own file, and no epoch is missing or
written twice under another name. Only the epochs a distillation reads are trained and kept
(``epochs``, see ``buffer_epochs``). Every random draw of epoch ``e`` derives from the buffer
seed, the expert's index and ``e`` (permutation, augmentation), so a resumed expert is
bit-identical on CPU.

With a sampler other than ``random`` (``sampler: dream``), each of an epoch's steps takes a
class-balanced batch from the sampler instead (``batch // classes`` per class, asked with the
expert's current net), as many steps as a shuffled epoch has; the sampler's state is checkpointed
with the expert. ``expert.json`` (written last, before ``done``) records the dataset, net, epochs,
parameter count, the final test accuracy and the sampler's statistics (DREAM: re-clusterings).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F

from hpcdd.augment import DSA, default_strategy
from hpcdd.config import ExecConfig, from_dict
from hpcdd.errors import CheckpointError, ConfigError
from hpcdd.io import atomic_torch_save, atomic_write_json, try_torch_load
from hpcdd.prereq import PrereqJob
from hpcdd.seeding import derive_seed, fresh_net, generator
from hpcdd.specs import SAMPLERS, load_impl
from hpcdd.specs.mtt import EXPERT_CONFIG, MttExpertConfig, check_buffer, read_buffer

EPOCHS_DIR = "epochs"
META = "expert.json"


def epoch_path(expert_dir: Path, epoch: int) -> Path:
    """The parameters of an expert after ``epoch`` epochs (0: its initialisation)."""
    return Path(expert_dir) / EPOCHS_DIR / f"epoch-{epoch:04d}.pt"


def epoch_files(expert_dir: Path) -> list[int]:
    """The epochs an expert dir holds a file for, sorted (temp files of torn writes excluded)."""
    d = Path(expert_dir) / EPOCHS_DIR
    if not d.is_dir():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in d.glob("epoch-*.pt"))


class MttExpert(PrereqJob):
    """``mtt_expert``: one expert trajectory, stepped one epoch at a time."""

    checkpoint_every = 1

    def __init__(self, config: MttExpertConfig, accelerator: Any, exec_cfg: ExecConfig) -> None:
        super().__init__(config, accelerator, exec_cfg)
        from hpcdd.data import load_dataset

        data = load_dataset(config.dataset, root=exec_cfg.data_root, download=exec_cfg.download,
                            im_size=config.im_size)
        self.bank, self.test, self.info = data.train, data.test, data.info
        self.device = accelerator.device
        self.purpose = f"mtt-expert-{config.index}"
        self.net = fresh_net(config.net, self.info, config.seed, f"{self.purpose}-init", self.device)
        self.initial = {k: v.detach().cpu().clone() for k, v in self.net.named_parameters()}
        self.opt = torch.optim.SGD(self.net.parameters(), lr=config.lr, momentum=config.momentum)
        strategy = config.dsa_strategy or default_strategy(config.dataset)
        self.dsa = DSA(strategy) if config.dsa and strategy != "none" else None
        self.steps_per_epoch = math.ceil(len(self.bank) / config.batch)
        self.sampler = None
        if config.sampler != "random":
            spec = SAMPLERS.get(config.sampler)
            params = from_dict(spec.params, config.sampler_params, where=f"sampler {config.sampler}")
            self.sampler = load_impl(spec.impl)(self.bank, derive_seed(config.seed, self.purpose), params)
            self.per_class = max(1, config.batch // self.info.num_classes)

    @property
    def total_steps(self) -> int:
        return self.config.epochs

    def describe(self) -> str:
        return f"1 epoch of {self.steps_per_epoch} batches of {self.config.batch}"

    def _batches(self, epoch: int) -> Iterator[torch.Tensor]:
        if self.sampler is None:
            order = torch.randperm(len(self.bank), generator=generator(self.config.seed, f"{self.purpose}-epoch-{epoch}"))
            yield from order.split(self.config.batch)
            return
        classes = range(self.info.num_classes)
        for _ in range(self.steps_per_epoch):
            yield torch.cat(self.sampler.batch_indices(classes, self.per_class, net=self.net))

    def step(self, it: int) -> dict[str, float]:
        gen = generator(self.config.seed, f"{self.purpose}-dsa-{it}")
        self.net.train()
        total = correct = 0
        loss_sum = 0.0
        for idx in self._batches(it):
            x = self.bank.images(idx).to(self.device)
            y = self.bank.labels[idx].to(self.device)
            if self.dsa is not None:
                x = self.dsa(x, gen, batchmode=False)
            out = self.net(x)
            loss = F.cross_entropy(out, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += float(loss.item()) * len(y)
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
        return {"loss": loss_sum / total, "train_acc": correct / total}

    def state_dict(self) -> dict[str, Any]:
        state = {"net": self.net.state_dict(), "opt": self.opt.state_dict()}
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])

    def after_step(self, out_dir: Path, done: int) -> None:
        if not epoch_path(out_dir, 0).exists():
            self._save_epoch(out_dir, 0, self.initial)
        self._save_epoch(out_dir, done, {k: v.detach().cpu().clone() for k, v in self.net.named_parameters()})

    def _save_epoch(self, out_dir: Path, epoch: int, params: Mapping[str, torch.Tensor]) -> None:
        path = epoch_path(out_dir, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(path, {"epoch": epoch, "index": self.config.index, "params": dict(params)})

    @torch.no_grad()
    def _test_accuracy(self) -> float:
        self.net.eval()
        correct = 0
        for x, y in self.test.batches(1024):
            correct += int((self.net(x.to(self.device)).argmax(1).cpu() == y).sum())
        return correct / len(self.test)

    def save(self, out_dir: Path) -> None:
        have = epoch_files(out_dir)
        want = list(range(self.config.epochs + 1))
        if have != want:
            raise CheckpointError(f"expert {out_dir} holds epoch files {have}, expected 0..{self.config.epochs}")
        atomic_write_json(Path(out_dir) / META, {
            "dataset": self.config.dataset, "net": self.config.net, "epochs": self.config.epochs,
            "index": self.config.index, "info": dataclasses.asdict(self.info),
            "parameters": sum(p.numel() for p in self.net.parameters()), "test_acc": self._test_accuracy(),
            "sampler": {"name": self.config.sampler, **(self.sampler.info() if self.sampler is not None else {})}})


# ----------------------------------------------------------------------------------------------
# the buffer a distillation reads


class Buffer:
    """The experts of a run: their dirs, read one epoch file at a time (a buffer of 100 experts x
    50 epochs does not fit in memory; two small files per iteration are cheap to read)."""

    def __init__(self, dirs: list[Path], epochs: int) -> None:
        self.dirs = list(dirs)
        self.epochs = epochs

    def __len__(self) -> int:
        return len(self.dirs)

    def params(self, k: int, epoch: int) -> dict[str, torch.Tensor]:
        path = epoch_path(self.dirs[k], epoch)
        state = try_torch_load(path)
        if not isinstance(state, dict) or not isinstance(state.get("params"), dict):
            raise CheckpointError(f"expert epoch file {path} is missing or corrupt; remove {self.dirs[k]} "
                                  "to rebuild that expert")
        return state["params"]


def load_buffer(cfg: Any, artefacts: Mapping[str, Path]) -> Buffer:
    """The run's buffer: ``buffer_dir`` if given, else the experts it built (roles expert0...),
    checked against the run (dataset, net, image size, epochs read): ``ConfigError`` if not."""
    from hpcdd.yamlfile import load_yaml_file

    if cfg.params.get("buffer_dir"):
        found = read_buffer(cfg.params["buffer_dir"])
        dirs, configs, where = [d for d, _ in found], [c for _, c in found], cfg.params["buffer_dir"]
    else:
        roles = sorted((r for r in artefacts if r.startswith("expert")), key=lambda r: int(r[len("expert"):]))
        if not roles:
            raise ConfigError("mtt needs its experts (prerequisites) or buffer_dir; none were given")
        dirs = [Path(artefacts[r]) for r in roles]
        configs = [from_dict(MttExpertConfig, load_yaml_file(d / EXPERT_CONFIG, what="expert config"),
                             where=str(d / EXPERT_CONFIG)) for d in dirs]
        where = str(dirs[0].parent)
    check_buffer(cfg, configs, where)
    return Buffer(dirs, min(c.epochs for c in configs))


__all__ = ["MttExpert", "Buffer", "load_buffer", "epoch_path", "epoch_files", "EPOCHS_DIR", "META"]
