"""``train.parallel``: DDP or FSDP2. The FSDP layout trains to the weights of plain training, and its checkpoints hold
the consolidated model and optimizer state in the single-process format (a plain optimizer loads them, and they
load back into the shards); a failed collective becomes one line. In-process with a one-process gloo group."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from medmae.engine.distributed import DistInfo, is_peer_failure, peer_lost
from medmae.config import OptimConfig
from medmae.engine.optim import build_adamw, build_optimizer, param_groups
from medmae.engine.parallel import Replicated, Sharded, full_tensor, shard_targets, to_index_keys, to_name_keys, wrap
from medmae.errors import CheckpointError, EXIT_ENVIRONMENT, PeerLostError
from medmae.models.heads import UNETR
from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.swin import SwinEncoder
from medmae.models.vit import ViT

CPU = torch.device("cpu")


def tiny_mae() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(ViT(2, (32, 32), (8, 8), 1, 32, 2, 2), 16, 2, 2)


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo group of one process (FSDP needs a group; one process shards nothing but runs every code path)."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield DistInfo(0, 1, 0, CPU)
    dist.destroy_process_group()


def train(model, optimizer, params, steps: int, start: int = 0) -> list[float]:
    losses = []
    for i in range(start, start + steps):
        x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(i))
        loss = model(x, torch.arange(4) + 10 * i)["loss"]
        loss.backward()
        full_tensor(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def layout(kind: str, info: DistInfo):
    model = tiny_mae()
    par = (Sharded if kind == "fsdp" else Replicated)(model, param_groups(model, 0.05), info)
    opt = build_adamw(par.param_groups, lr=1e-3, betas=(0.9, 0.95), fused=True)
    return par, opt, [p for g in par.param_groups for p in g["params"]]


def test_fsdp_trains_like_plain_training_and_consolidates_in_the_single_process_format(one_process_group):
    plain, plain_opt, plain_params = layout("ddp", one_process_group)
    fsdp, fsdp_opt, fsdp_params = layout("fsdp", one_process_group)
    assert type(fsdp.step_model).__name__.startswith("FSDP") and fsdp.step_model is not fsdp.model
    a = train(plain.step_model, plain_opt, plain_params, 3)
    b = train(fsdp.step_model, fsdp_opt, fsdp_params, 3)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6

    before = {k: v.clone() for k, v in fsdp.model.state_dict().items()}
    state = fsdp.model_state()  # gathers the shards into the plain model
    ref = plain.model_state()
    assert state.keys() == ref.keys()
    assert max(float((state[k] - ref[k]).abs().max()) for k in ref) < 1e-6
    assert any(not torch.equal(before[k], state[k]) for k in state), "the plain model must have been refreshed"

    opt_state, ref_opt = fsdp.optimizer_state(fsdp_opt), plain.optimizer_state(plain_opt)
    assert [g["params"] for g in opt_state["param_groups"]] == [g["params"] for g in ref_opt["param_groups"]]
    assert opt_state["state"].keys() == ref_opt["state"].keys()
    for i, s in ref_opt["state"].items():
        for k, v in s.items():
            assert torch.allclose(opt_state["state"][i][k], v, rtol=1e-5, atol=1e-7), (i, k)
    copy.deepcopy(plain_opt).load_state_dict(opt_state)  # a plain optimizer takes it as it is


def test_fsdp_resumes_bit_for_bit_from_its_consolidated_state(one_process_group):
    first, first_opt, first_params = layout("fsdp", one_process_group)
    train(first.step_model, first_opt, first_params, 2)
    model_state, opt_state = copy.deepcopy((first.model_state(), first.optimizer_state(first_opt)))  # as saved
    expected = train(first.step_model, first_opt, first_params, 2, start=2)

    again, again_opt, again_params = layout("fsdp", one_process_group)
    again.model.load_state_dict(model_state)
    again.load_optimizer_state(again_opt, opt_state)
    again.pull()
    assert train(again.step_model, again_opt, again_params, 2, start=2) == expected
    end, end_again = first.model_state(), again.model_state()
    assert all(torch.equal(end[k], end_again[k]) for k in end)


def test_name_and_index_keyed_optimizer_states_convert_both_ways():
    order = ["a.weight", "a.bias", "b.weight"]
    named = {"state": {"a.weight": {"exp_avg": torch.ones(1)}, "b.weight": {"exp_avg": torch.zeros(1)}},
             "param_groups": [{"lr": 0.1, "params": ["a.weight", "b.weight"]}, {"lr": 0.2, "params": ["a.bias"]}]}
    indexed = to_index_keys(named, order)
    assert indexed["param_groups"][0]["params"] == [0, 2] and set(indexed["state"]) == {0, 2}
    assert to_name_keys(indexed, order) == named
    with pytest.raises(CheckpointError, match="names parameter 7, the model has 3"):
        to_name_keys({"state": {7: {}}, "param_groups": []}, order)


def test_fsdp_shards_the_transformer_blocks_of_every_family_and_one_process_stays_plain():
    model = tiny_mae()
    targets = shard_targets(model)
    blocks = [*model.encoder.blocks, *model.decoder_blocks]
    assert len(targets) == len(blocks) and {id(m) for m in targets} == {id(m) for m in blocks}
    swin = SwinEncoder(2, (32, 32), (4, 4), 1, 8, (1, 1), (1, 2), window_size=4)  # stages: never called, hold blocks
    assert [type(m).__name__ for m in shard_targets(swin)] == ["SwinBlock"] * 2
    unetr = UNETR(ViT(3, (32,) * 3, (16,) * 3, 1, 32, 2, 2), 2, feature_size=4)  # conv up-blocks stay in the root
    assert {id(m) for m in shard_targets(unetr)} == {id(m) for m in unetr.encoder.blocks}
    par = wrap(model, param_groups(model, 0.05), "fsdp", DistInfo(0, 1, 0, CPU))
    assert isinstance(par, Replicated) and par.step_model is model


def test_fsdp_trains_sgd_unfused_since_fused_sgd_has_no_sharded_kernel(one_process_group):
    fsdp, _, _ = layout("fsdp", one_process_group)
    sgd, adamw = OptimConfig(name="sgd", fused=True), OptimConfig(fused=True)
    assert fsdp.optim_config(sgd).fused is False and sgd.fused is True
    assert fsdp.optim_config(adamw) is adamw  # fused AdamW shards fine
    groups = fsdp.param_groups
    opt = build_optimizer(groups, fsdp.optim_config(sgd), lr=0.1)
    train(fsdp.step_model, opt, [p for g in groups for p in g["params"]], 1)


def test_a_collective_failed_by_a_lost_peer_is_one_line_naming_the_restart_point():
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:51333: Connection "
                        "reset by peer. This is typically caused by a remote worker hanging.\nmore")
    assert is_peer_failure(gloo) and is_peer_failure(dist.DistNetworkError("store gone"))
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x5)"))
    err = peer_lost(gloo, DistInfo(1, 2, 0, CPU), 5, "runs/x/checkpoints/step_00000004")
    msg = str(err)
    assert isinstance(err, PeerLostError) and err.exit_code == EXIT_ENVIRONMENT and "\n" not in msg
    assert msg.startswith("rank 1 of 2 lost the other processes of this run after step 5 (Read error")
    assert "Connection reset by peer)" in msg and "typically" not in msg
    assert "runs/x/checkpoints/step_00000004" in msg and "--resume auto" in msg
