"""How the model is spread over the processes: one process, DDP (``train.parallel: ddp``, a full replica per
process) or FSDP2 (``train.parallel: fsdp``, parameters, gradients and optimizer state sharded over the processes).

Whatever the layout, a checkpoint holds the *consolidated* model and optimizer state in the single-process format
(``model.safetensors`` keyed by parameter name, ``optimizer.state_dict()`` keyed by parameter index), so an FSDP
checkpoint resumes under DDP or in one process and the other way round, and the export is the same file.

Under FSDP the trainer keeps its plain model (``Trainer.model``) beside the sharded copy that trains:
:meth:`Sharded.sync` gathers the shards into it (a collective every rank calls at the same step) before the work that
rank 0 does alone with the model (figures, the k-NN probe, the export), which would otherwise wait forever for the
other ranks inside FSDP's all-gathers.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medmae.config import OptimConfig
from medmae.engine.distributed import DistInfo
from medmae.errors import CheckpointError

log = logging.getLogger(__name__)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor (FSDP's sharded values, e.g. the gradient norm) gathered, anything else as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class Replicated:
    """One process, or DDP: every process holds the whole model; states are the module's and optimizer's own."""

    kind = "ddp"

    def __init__(self, model: nn.Module, groups: list[dict], dist: DistInfo):
        self.model, self.param_groups = model, groups
        if dist.enabled:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.step_model: nn.Module = DistributedDataParallel(model, device_ids=ids)
        else:
            self.step_model = model

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def optim_config(self, cfg: OptimConfig) -> OptimConfig:
        return cfg

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def pull(self) -> None:
        """After weights were loaded into :attr:`model`: nothing to do, the replica is the model."""

    def sync(self) -> None:
        """Before rank 0 uses :attr:`model` alone: nothing to do."""


def shard_targets(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: the transformer blocks, i.e. elements of an ``nn.ModuleList`` (nested
    ones included) that are called (have a ``forward``; a container only holding blocks is never called, so FSDP's
    hooks would never gather it) and hold an ``nn.Linear``: ViT and decoder blocks, Swin blocks. Innermost first, so
    that one block's parameters are gathered at a time; the root takes the rest. Convolutional stages (ResEnc, the
    UNETR decoder) stay in the root: they are small, and some return views, which FSDP warns an in-place op could
    silently detach from its hooks."""
    found = [m for parent in model.modules() if isinstance(parent, nn.ModuleList) for m in parent
             if type(m).forward is not nn.Module.forward and any(isinstance(x, nn.Linear) for x in m.modules())]
    return list(reversed(found))


def remap_groups(groups: list[dict], model: nn.Module, copy_: nn.Module) -> list[dict]:
    """The optimizer groups of ``model`` with each parameter replaced by the parameter of the same name in ``copy_``."""
    names = {id(p): n for n, p in model.named_parameters()}
    new = dict(copy_.named_parameters())
    out = []
    for g in groups:
        missing = [names.get(id(p), "?") for p in g["params"] if names.get(id(p)) not in new]
        if missing:
            raise ValueError(f"parameters {missing[:3]} of the optimizer groups are not in the sharded model")
        out.append({**g, "params": [new[names[id(p)]] for p in g["params"]]})
    return out


def param_names(groups: list[dict], model: nn.Module) -> list[str]:
    """Parameter names in optimizer order (the index order of ``optimizer.state_dict()``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in groups for p in g["params"]]


def to_index_keys(state: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """A name-keyed optimizer state (torch.distributed.checkpoint's) -> the index-keyed one of ``state_dict()``."""
    index = {n: i for i, n in enumerate(order)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def to_name_keys(state: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """The inverse of :func:`to_index_keys`; an index outside ``order`` is a :class:`CheckpointError`."""
    def name(i: int) -> str:
        if not isinstance(i, int) or not 0 <= i < len(order):
            raise CheckpointError(f"optimizer state names parameter {i!r}, the model has {len(order)}")
        return order[i]

    groups = [{**g, "params": [name(i) for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {name(i): v for i, v in state["state"].items()}, "param_groups": groups}


class Sharded:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) on a copy of the model; states consolidated on every rank."""

    kind = "fsdp"

    def __init__(self, model: nn.Module, groups: list[dict], dist: DistInfo):
        from torch.distributed.fsdp import fully_shard

        self.model = model
        self.order = param_names(groups, model)
        sharded = copy.deepcopy(model)
        for m in shard_targets(sharded):
            fully_shard(m)
        fully_shard(sharded)
        self.step_model = sharded
        self.param_groups = remap_groups(groups, model, sharded)
        log.info("FSDP: parameters, gradients and optimizer state sharded over %d processes (%d units)",
                 dist.world_size, len(shard_targets(model)) + 1)

    def optim_config(self, cfg: OptimConfig) -> OptimConfig:
        """Torch's fused SGD has no DTensor (sharded) implementation: plain SGD instead (fused AdamW has one)."""
        return cfg.model_copy(update={"fused": False}) if cfg.name == "sgd" else cfg

    @staticmethod
    def _options(**kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def model_state(self) -> dict[str, torch.Tensor]:
        """Gather the shards (collective) into :attr:`model` and return its state."""
        self.sync()
        return self.model.state_dict()

    def sync(self) -> None:
        """All-gather the trained weights into the plain model (every rank calls it at the same step)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        self.model.load_state_dict(get_model_state_dict(self.step_model, options=self._options()))

    def pull(self) -> None:
        """Weights loaded into the plain model (a resumed checkpoint, the same on every rank) into the shards."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.step_model, self.model.state_dict(), options=self._options())

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The consolidated optimizer state in ``optimizer.state_dict()``'s index-keyed format (collective)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(self.step_model, optimizer, options=self._options(cpu_offload=True))
        return to_index_keys(state, self.order) if state else {}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """An index-keyed consolidated optimizer state (every rank read the same checkpoint) into the shards."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.step_model, optimizer, to_name_keys(state, self.order), options=self._options())


def wrap(model: nn.Module, groups: list[dict], parallel: str, dist: DistInfo) -> Replicated | Sharded:
    """The layout named by ``train.parallel`` for this run (one process is always :class:`Replicated`)."""
    if parallel == "fsdp" and dist.enabled:
        return Sharded(model, groups, dist)
    if parallel == "fsdp":
        log.info("train.parallel=fsdp with one process: nothing to shard, plain training")
    return Replicated(model, groups, dist)
