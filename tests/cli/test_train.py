"""``cloudmask train`` end to end on tiny stand-in data: checkpoint, best weights, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cloudmask.cli.app import app
from cloudmask.errors import ModelError
from cloudmask.model import load_model

TINY = [
    "data.simulator=standin", "data.tile=32", "data.batch=2", "val.scenes=1", "val.size=32",
    "model.desc_dim=8", "model.enc_width=4", "model.lin4_width=4", "model.c4=8", "model.c8=8",
    "model.dilations=[1]", "model.head_width=4", "train.warmup=1",
]


def test_train_writes_weights_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--out", str(out), "--json", "train.steps=2", "train.val_every=2", "train.ckpt_every=1", *TINY])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["steps"] == 2
    assert (out / "last.pt").is_file() and (out / "best.safetensors").is_file()
    p = load_model(out / "best.safetensors")
    assert p.version == "0.1.0"
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "--quiet", "train.steps=3", "train.val_every=10", *TINY])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    # a finished run resumed: nothing to do, and it says 3 steps, not 4
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "--json", "train.steps=3", "train.val_every=10", *TINY])
    assert res.exit_code == 0 and json.loads(res.stdout)["steps"] == 3
    # the run folder alone is enough: its saved config.yaml, not the defaults, unless -c is given
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "--json", "train.steps=3"])
    assert res.exit_code == 0 and json.loads(res.stdout)["steps"] == 3, res.output
    # a resume that would be another run (architecture, seed, tile size): one line, exit 2
    for change in ("model.c4=16", "seed=9", "data.tile=64"):
        res = runner.invoke(app, ["train", "--out", str(out), "--resume", "-q", "train.steps=4", *TINY, change])
        assert res.exit_code == 2 and "config differs" in res.stderr and change.split("=")[0] in res.stderr, res.output
    # a damaged checkpoint: one line, exit 2, never unpickled
    saved = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(saved[: len(saved) // 2])
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "-q", "train.steps=4", *TINY])
    assert res.exit_code == 2 and "not a readable checkpoint" in res.stderr and "Traceback" not in res.output
    assert "weights_only" not in res.stderr  # not torch's advice to load it unsafely
    (out / "last.pt").write_bytes(saved)
    # an emptied config.yaml: resuming on the defaults would be another run than the checkpoint's
    saved_config = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text("")
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "-q", "train.steps=4", *TINY])
    assert res.exit_code == 2 and "holds no config" in res.stderr, res.output
    (out / "config.yaml").write_text(yaml.safe_dump(saved_config, sort_keys=False))
    # steps logged after the checkpoint by a run that was stopped are not logged twice on resuming
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 1.0}\n{"step": 5, "lo')  # killed mid-line
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "-q", "train.steps=4", "train.val_every=10", *TINY])
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    # fewer steps than the run has done: an error, and its config is left as it was
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "-q", "train.steps=2", *TINY])
    assert res.exit_code == 2 and "already at step 4" in res.stderr, res.output
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 4
    # a fresh run into a run's folder: refused (it wiped the run silently), unless --overwrite
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = runner.invoke(app, ["train", "--out", str(out), "-q", "train.steps=1", "train.val_every=1", *TINY])
    assert res.exit_code == 2 and "already holds a training run" in res.stderr and "--resume" in res.stderr, res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --overwrite with a run that cannot start (a missing real-data root): the earlier run stays
    res = runner.invoke(app, ["train", "--out", str(out), "-q", "--overwrite", f"real.root={tmp_path / 'nope'}", *TINY])
    assert res.exit_code == 2 and {p.name: p.read_bytes() for p in out.iterdir()} == before, res.output
    res = runner.invoke(app, ["train", "--out", str(out), "-q", "--overwrite", "train.steps=1", "train.val_every=1", *TINY])
    assert res.exit_code == 0 and len((out / "log.jsonl").read_text().splitlines()) == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 1
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "--overwrite", *TINY])
    assert res.exit_code == 2 and "give one of them" in res.stderr


def test_train_config_file_and_bad_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  steps: 1\n  val_every: 1\nnot_a_key: 3\n")
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "r"), *TINY])
    assert res.exit_code == 2 and "not_a_key" in res.output
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "not found" in res.output
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r2"), "--resume", *TINY])
    assert res.exit_code == 2 and "no checkpoint" in res.output and not (tmp_path / "r2").exists()  # nothing made
    for bad, says in ((["data.sensors=[nosuch]"], "nosuch"), (["data.simulator=simulator", "data.sim_options.foo=1"], "sim_options")):
        res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r4"), "-q", *TINY, *bad])
        assert res.exit_code == 2 and says in res.output and not (tmp_path / "r4").exists(), res.output
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r3"), "model.encoder=banana", *TINY])
    assert res.exit_code != 0


def test_missing_init_weights_and_a_checkpoint_given_as_weights(tmp_path: Path) -> None:
    """A train.init that does not exist is a usage error (exit 2, was 1 after the run folder was made);
    a run's last.pt given as weights says which file holds them."""
    runner = CliRunner()
    res = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), "-q", f"train.init={tmp_path / 'nope.safetensors'}", *TINY])
    assert res.exit_code == 2 and "train.init: no such weights file" in res.stderr and not (tmp_path / "run").exists()
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not weights")
    with pytest.raises(ModelError, match="training checkpoint.*best.safetensors"):
        load_model(tmp_path / "last.pt")


def test_settings_that_cannot_train_are_refused(tmp_path: Path) -> None:
    """All-zero class weights trained on a loss of 0; no validation scenes chose a "best" on nothing."""
    runner = CliRunner()
    for bad, words in (("train.class_weights=[0,0,0,0]", "not all 0"), ("val.scenes=0", "nothing to validate on")):
        res = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), "-q", *TINY, bad])
        assert res.exit_code == 2 and words in res.stderr, res.output
        assert not (tmp_path / "run").exists()


def test_a_line_per_validation_when_stderr_is_no_terminal(tmp_path: Path) -> None:
    """In cron or a pipe the bar draws only at the end: each validation prints a plain line instead."""
    res = CliRunner().invoke(app, ["train", "-o", str(tmp_path / "run"), "train.steps=4", "train.val_every=2", *TINY])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["2/4", "4/4"] and all("loss " in ln and "s:sentinel2" in ln for ln in lines)
