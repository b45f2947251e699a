"""``train``'s settings objects and the flat ``train.*`` names gin binds onto them."""

import dataclasses
import inspect

import gin
import pytest

from core.losses import cce, ce
from core.model import SASRec
from core.training import Evaluation, Optim, Parallel, Schedule, StepSettings, TrainConfig, train, train_flat
from core.training.flat import bound_config
from core.training.settings import FLAT


def test_the_flat_entry_takes_every_flat_name_with_the_objects_defaults():
    params = inspect.signature(train_flat).parameters
    # dist_timeout_s: the command reads it before it joins the process group (experiments/run.py)
    run_keywords = {"data", "out_dir", "dataset_name", "data_path", "resume", "watch", "dist_timeout_s"}
    assert set(params) - run_keywords == set(FLAT)
    defaults = {name: params[name].default for name in FLAT}
    assert TrainConfig.from_flat(**defaults) == TrainConfig()  # one source for every default


def test_train_takes_about_ten_parameters():
    params = list(inspect.signature(train).parameters)
    assert params[:9] == ["data", "out_dir", "model", "loss_fn", "optim", "schedule", "evaluation",
                          "step", "parallel"]
    assert len(params) <= 13


def test_from_flat_groups_and_flat_gives_them_back():
    config = TrainConfig.from_flat(epochs=3, lr=0.01, max_len=20, seed=4, eval_batch_size=7,
                                   compile=True, device="cpu", loss_fn=cce, test=False)
    assert config.schedule == Schedule(epochs=3)
    assert config.optim == Optim(lr=0.01, max_len=20, seed=4)
    assert config.evaluation == Evaluation(batch_size=7, test=False)
    assert config.step == StepSettings(compile=True)
    assert config.parallel == Parallel(device="cpu")
    assert config.loss_fn is cce and config.model is SASRec
    flat = config.flat()
    assert flat["epochs"] == 3 and flat["eval_batch_size"] == 7 and flat["loss_fn"] is cce
    assert TrainConfig.from_flat(**flat) == config
    with pytest.raises(TypeError, match="not a train setting: epoch"):
        TrainConfig.from_flat(epoch=3)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Optim().lr = 1.0


def test_bound_config_reads_the_train_bindings():
    gin.clear_config()
    try:
        gin.parse_config(["train.epochs = 3", "train.batch_size = 32", "train.catalog_parallel = True",
                          "train.loss_fn = @ce"])
        config = bound_config()
    finally:
        gin.clear_config()
    assert config.schedule.epochs == 3 and config.optim.batch_size == 32
    assert config.parallel.catalog_parallel and config.loss_fn is ce
    assert config.optim.lr == Optim().lr  # unbound: the default


def test_a_bad_device_names_the_binding():
    with pytest.raises(ValueError, match="train.device"):
        Parallel(device="tpu:9").resolve_device()


def test_graph_min_bucket_is_a_train_binding():
    """``train.graph_min_bucket`` (the graphed step's smallest bucket: 128 was the fastest
    beauty-like epoch measured, at more graph memory) reaches the step settings."""
    assert TrainConfig.from_flat(graph_min_bucket=128).step.graph_min_bucket == 128
    assert TrainConfig.from_flat(graph_min_bucket=128).flat()["graph_min_bucket"] == 128
    with pytest.raises(ValueError, match="graph_min_bucket"):
        TrainConfig.from_flat(graph_min_bucket=0)
