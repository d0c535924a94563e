"""The pipeline: recipe checks, the budget split, the calibration split, and a whole run end to end on a
small synthetic corpus (SSL -> pseudo-labels -> supervised round -> back-end -> calibration -> model file)."""

import json

import numpy as np
import pytest
import yaml

from sslspeaker.cli import main
from sslspeaker.config import ConfigError
from sslspeaker.data.manifest import read_manifest, write_trials
from sslspeaker.data.synth import generate_corpus
from sslspeaker.data.trials import build_trials
from sslspeaker.pipeline.config import load_pipeline
from sslspeaker.pipeline.runner import plan_minutes
from sslspeaker.pipeline.stages import calibration_pairs, held_out_speakers


def write_yaml(path, tree):
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def base_pipeline(pool="pool.csv", **extra):
    tree = {"pool": [str(pool)], "budget_minutes": 30, "overhead_minutes": 1.0,
            "stages": [{"name": "ssl", "kind": "train", "recipe": "ssl.yaml", "share": 0.5},
                       {"name": "labels", "kind": "pseudolabel", "clusters": "4"},
                       {"name": "sup", "kind": "train", "recipe": "sup.yaml", "share": 0.5},
                       {"name": "backend", "kind": "backend", "chain": ["lengthnorm", "plda"]},
                       {"name": "calibration", "kind": "calibrate"}]}
    tree.update(extra)
    return tree


# ---- the recipe ------------------------------------------------------------------------------
def test_a_valid_recipe_loads_with_defaults(tmp_path):
    cfg = load_pipeline(write_yaml(tmp_path / "p.yaml", base_pipeline()))
    assert [s.name for s in cfg.stages] == ["ssl", "labels", "sup", "backend", "calibration"]
    assert cfg.stages[1].algorithm == "kmeans" and cfg.stages[4].prior == 0.01
    assert cfg.recipe_dir == str(tmp_path.resolve())


@pytest.mark.parametrize("change, message", [
    (lambda t: t["stages"][1].update(kind="cluster"), r"stages\[1\].kind: 'cluster'"),
    (lambda t: t["stages"][2].update(name="ssl"), r"stages\[2\].name: 'ssl' is used twice"),
    (lambda t: t["stages"][2].update(init_from="backend"), r"stages\[2\].init_from: 'backend' is not an earlier train"),
    (lambda t: t["stages"][0].update(share=1.5), r"stages\[0\].share: 1.5"),
    (lambda t: t["stages"][1].update(clusters="many"), r"stages\[1\].clusters: 'many'"),
    (lambda t: t["stages"].insert(0, {"name": "early", "kind": "pseudolabel"}), "needs a train stage before it"),
    (lambda t: t["stages"][3].update(colour="red"), r"unknown key stages\[3\].colour"),
    (lambda t: t.update(pool=[]), "pool: no manifest"),
    (lambda t: t.update(budget_minutes=0), "budget_minutes must be > 0"),
    (lambda t: t["stages"].insert(3, {"name": "avg", "kind": "average", "models": ["sup"]}),
     r"stages\[3\].models: \['sup'\] \(an average stage needs 2 or more"),
    (lambda t: t["stages"].insert(3, {"name": "avg", "kind": "average", "models": ["ssl", "labels"]}),
     r"stages\[3\].models: 'labels' is not an earlier train or average stage"),
    (lambda t: t["stages"][2].update(models=["ssl"]), r"stages\[2\].models: only an average stage"),
    (lambda t: t["stages"][1].update(options={"hold_out_from": "ssl"}),
     r"stages\[1\].options.hold_out_from: 'ssl' is not an earlier pseudolabel stage"),
])
def test_recipe_errors_name_the_option(tmp_path, change, message):
    tree = base_pipeline()
    change(tree)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write_yaml(tmp_path / "p.yaml", tree))


def test_budget_split_follows_shares_and_what_is_left(tmp_path):
    cfg = load_pipeline(write_yaml(tmp_path / "p.yaml", base_pipeline()))
    # stage 0: 30 min - 3 non-training stages x 1 min = 27, half of it
    assert plan_minutes(cfg, 0, spent=0.0) == pytest.approx(13.5)
    # stage 2 after 16 min spent (ssl ran long): 30 - 16 - 2 later non-training stages = 12, all of it
    assert plan_minutes(cfg, 2, spent=16.0) == pytest.approx(12.0)
    with pytest.raises(ConfigError, match="raise the budget"):
        plan_minutes(cfg, 2, spent=29.0)


def test_held_out_speakers_are_whole_speakers():
    speakers = np.repeat(np.array([f"c{i}" for i in range(10)]), 5)
    held = held_out_speakers(speakers, 0.2, seed=0)
    assert held.sum() == 10 and len(set(speakers[held])) == 2
    assert not set(speakers[held]) & set(speakers[~held])
    np.testing.assert_array_equal(held, held_out_speakers(speakers, 0.2, seed=0))
    with pytest.raises(ConfigError, match="calibration_share"):
        held_out_speakers(speakers, 0.95, seed=0)


def test_calibration_pairs_balance_targets_and_nontargets():
    speakers = np.repeat(np.array(["a", "b", "c"]), 4)  # 3 x C(4,2) = 18 same-speaker pairs of 66
    i, j, y = calibration_pairs(speakers, max_pairs=100, seed=0)
    assert y.sum() == 18 and len(y) == 36
    assert np.all((speakers[i] == speakers[j]) == y.astype(bool)) and np.all(i < j)
    i, j, y = calibration_pairs(speakers, max_pairs=5, seed=0)
    assert y.sum() == 5 and len(y) == 10


# ---- a whole run -----------------------------------------------------------------------------
TINY = {"features": {"n_mels": 24, "norm": "global"},
        "model": {"encoder": "tiny_test", "options": {"channels": 16, "embed_dim": 16}},
        "data": {"crop_seconds": 1.0, "workers": 0, "cache_gb": 0.0},
        "train": {"batch_size": 8, "device": "cpu", "threads": 1, "checkpoint_every": 0, "log_every": 1,
                  "fit_to_budget": False}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    pool = generate_corpus(root / "pool", n_speakers=8, utterances_per_speaker=6, seed=5, min_duration=1.5,
                           max_duration=2.0)
    dev = generate_corpus(root / "dev", n_speakers=4, utterances_per_speaker=4, seed=6, min_duration=1.5,
                          max_duration=2.0, speaker_prefix="dev")
    trials = root / "dev" / "trials.txt"
    write_trials(trials, build_trials(read_manifest(dev), seed=0))
    return root, pool, trials


def tiny_recipes(folder, pool, trials):
    ssl = {**TINY, "method": {"name": "moco", "options": {"queue_size": 16, "temperature": 0.1}},
           "optim": {"name": "adam", "lr": 0.001, "weight_decay": 0.0}, "train": {**TINY["train"], "epochs": 2}}
    sup = {**TINY, "data": {**TINY["data"], "n_views": 1},
           "method": {"name": "aamsoftmax", "options": {"n_classes": 2, "margin": 0.1, "scale": 10.0}},
           "optim": {"name": "adam", "lr": 0.001, "weight_decay": 0.0}, "train": {**TINY["train"], "epochs": 2}}
    write_yaml(folder / "ssl.yaml", ssl)
    write_yaml(folder / "sup.yaml", sup)
    tree = base_pipeline(pool, device="cpu", budget_minutes=20,
                         dev={"trials": str(trials), "audio_root": str(trials.parent)})
    tree["stages"][1]["options"] = {"max_mean_cosine": 1.0, "max_cluster_share": 1.0, "drop_mads": None}
    tree["stages"][3]["options"] = {"calibration_share": 0.5}
    return write_yaml(folder / "pipeline.yaml", tree)


def test_pipeline_runs_every_stage_and_resumes(corpus, tmp_path, capsys):
    root, pool, trials = corpus
    recipe = tiny_recipes(tmp_path, pool, trials)
    out = tmp_path / "run"
    assert main(["pipeline", str(recipe), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["ssl", "labels", "sup", "backend", "calibration"]
    assert all(s["done"] for s in stages.values())
    assert stages["ssl"]["outputs"]["steps"] == 2 * (48 // 8)  # 2 epochs of 48 files in batches of 8
    assert stages["sup"]["outputs"]["init_from"].startswith(stages["ssl"]["outputs"]["run"])
    labels = stages["labels"]["outputs"]
    assert labels["k"] == 4 and 2 <= labels["speakers"] <= 4
    assert labels["diagnostics"]["kept"]["speakers"] == 8  # the pool's own speakers, for the report only
    assert len(read_manifest(labels["manifest"])) == labels["kept"]
    assert stages["calibration"]["outputs"]["calibration"]["slope"] != 1.0
    for name in ("ssl", "sup", "backend", "calibration"):
        assert 0.0 <= stages[name]["dev"]["eer"] <= 100.0
    assert stages["calibration"]["dev"]["backend"] == "lengthnorm+plda"
    assert "cllr" in stages["calibration"]["dev"]
    assert (out / "model.safetensors").is_file() and report["final"]["backend_from"] == "calibration"
    saved = yaml.safe_load((out / "pipeline.yaml").read_text())
    assert saved["stages"][1]["clusters"] == "4"
    # a second run refuses the folder; --resume finds every stage done and only rebuilds the model file
    assert main(["pipeline", str(recipe), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["pipeline", str(recipe), "--out", str(out), "--resume"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["resumed"] == 1 and again["stages"]["ssl"]["finished"] == stages["ssl"]["finished"]


@pytest.mark.parametrize("recipe", ["pipeline_speechocean762.yaml", "pipeline_speechocean762_soup.yaml",
                                    "pipeline_voxceleb2.yaml"])
def test_shipped_pipeline_recipes_and_their_training_recipes_load(recipe, tmp_path, monkeypatch):
    from pathlib import Path

    from sslspeaker.config import Config, build_dataclass, merge_trees, parse_overrides, read_recipe

    monkeypatch.setenv("SSLSPEAKER_DATA", str(tmp_path))
    cfg = load_pipeline(Path(__file__).parents[1] / "configs" / recipe)
    assert sum(s.share for s in cfg.stages if s.kind == "train") == pytest.approx(1.0)
    assert cfg.stages[-1].kind == "calibrate" and cfg.stages[-2].kind == "backend"
    for st in (s for s in cfg.stages if s.kind == "train"):
        tree = merge_trees(read_recipe(Path(cfg.recipe_dir) / st.recipe), parse_overrides(st.overrides))
        assert isinstance(build_dataclass(Config, tree), Config)


def test_stored_pool_embeddings_are_reused_only_for_the_same_model(tmp_path):
    from sslspeaker.pipeline.stages import stored_pool_embeddings

    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "embeddings.npy", emb)
    (tmp_path / "embedding_ids.csv").write_text("path,cluster,speaker,status\na,0,c0,kept\nb,0,c0,kept\nc,1,,dropped\n")
    labels = {"manifest": str(tmp_path / "manifest.csv"), "model": "runs/x"}
    got = stored_pool_embeddings(labels, "runs/x")
    assert sorted(got) == ["a", "b", "c"] and got["b"].tolist() == [2.0, 3.0]
    assert stored_pool_embeddings(labels, "runs/y") is None


def test_stored_pool_embeddings_only_from_the_inference_encoder(tmp_path):
    """A pseudolabel stage that clustered with a momentum (key / teacher) encoder wrote embeddings that are
    not the exported model's: the back-end must embed again instead of reusing them."""
    from sslspeaker.pipeline.stages import stored_pool_embeddings

    np.save(tmp_path / "embeddings.npy", np.eye(2, dtype=np.float32))
    (tmp_path / "embedding_ids.csv").write_text("path,cluster,speaker,status\na.wav,0,c00000,kept\nb.wav,1,c00001,kept\n")
    labels = {"manifest": str(tmp_path / "manifest.csv"), "model": "runs/ssl"}
    got = stored_pool_embeddings(labels, "runs/ssl")
    assert got is not None and np.array_equal(got["b.wav"], [0.0, 1.0])
    assert stored_pool_embeddings({**labels, "inference_embeddings": True}, "runs/ssl") is not None
    assert stored_pool_embeddings({**labels, "inference_embeddings": False}, "runs/ssl") is None
    assert stored_pool_embeddings(labels, "runs/other") is None


def test_calibration_on_speakers_the_last_round_never_saw(corpus, tmp_path):
    """labels holds half of its (4) pseudo-speakers out of training (hold_out); the back-end fits on the
    rest of the later labels and the calibration scores only the held-out utterances."""
    root, pool, trials = corpus
    recipe = tiny_recipes(tmp_path, pool, trials)
    tree = yaml.safe_load(recipe.read_text())
    labels = tree["stages"][1]
    labels["options"]["hold_out"] = 0.5
    tree["stages"].insert(3, {**labels, "name": "labels2", "options": {**labels["options"], "hold_out": 0.0}})
    tree["stages"][4]["options"] = {"calibration_from": "labels"}
    out = tmp_path / "run"
    assert main(["pipeline", str(write_yaml(tmp_path / "holdout.yaml", tree)), "--out", str(out)]) == 0
    stages = json.loads((out / "report.json").read_text())["stages"]
    first = stages["labels"]["outputs"]
    trained = {e.path for e in read_manifest(first["manifest"])}
    unseen = {e.path for e in read_manifest(first["held_out"])}
    assert unseen and not trained & unseen and first["manifest"].endswith("train.csv")
    assert first["speakers"] == len({e.speaker for e in read_manifest(first["manifest"])})
    sup_data = yaml.safe_load((out / "03_sup" / "config.yaml").read_text())["data"]["train"]
    assert [d["manifest"] if isinstance(d, dict) else d for d in sup_data] == [first["manifest"]]
    calibrated = {e.path for e in read_manifest(stages["backend"]["outputs"]["held_out"])}
    assert calibrated and calibrated <= unseen
    assert stages["calibration"]["outputs"]["pairs"] > 0
    bad = {**tree, "stages": [dict(s) for s in tree["stages"]]}
    bad["stages"][1] = {**labels, "options": {**labels["options"], "hold_out": 0.0}}
    assert main(["pipeline", str(write_yaml(tmp_path / "bad.yaml", bad)), "--out", str(tmp_path / "bad")]) == 2


def test_an_average_of_rounds_that_never_saw_the_calibration_speakers(corpus, tmp_path):
    """labels holds half its pseudo-speakers out; labels2 (hold_out_from) leaves the same utterances out of the
    second round; both rounds start from ssl and are averaged; the back-end calibrates on those utterances and
    the model file is the average's."""
    import torch

    from sslspeaker.runs import load_checkpoint, run_checkpoint

    root, pool, trials = corpus
    tree = yaml.safe_load(tiny_recipes(tmp_path, pool, trials).read_text())
    ssl, labels, sup, backend, calibration = tree["stages"]
    labels["options"]["hold_out"] = 0.5
    tree["stages"] = [ssl, labels, sup, {**labels, "name": "labels2", "options": {**labels["options"], "hold_out": 0.0,
                                                                                 "hold_out_from": "labels"}},
                      {**sup, "name": "sup2", "init_from": "ssl"},
                      {"name": "avg", "kind": "average", "models": ["sup", "sup2"]},
                      {**labels, "name": "labels3", "options": {**labels["options"], "hold_out": 0.0}},
                      {**backend, "options": {"calibration_from": "labels"}}, calibration]
    out = tmp_path / "run"
    assert main(["pipeline", str(write_yaml(tmp_path / "avg.yaml", tree)), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    unseen = {e.path for e in read_manifest(stages["labels"]["outputs"]["held_out"])}
    second = stages["labels2"]["outputs"]
    assert second["manifest"].endswith("04_labels2/train.csv") and second["held_out"] is None
    trained = {e.path for e in read_manifest(second["manifest"])}
    assert trained and not trained & unseen and second["left_out"] > 0
    assert second["speakers"] == len({e.speaker for e in read_manifest(second["manifest"])})
    assert stages["sup2"]["outputs"]["init_from"].startswith(stages["ssl"]["outputs"]["run"])
    rounds = [load_checkpoint(run_checkpoint(stages[n]["outputs"]["run"]))["method"] for n in ("sup", "sup2")]
    avg = load_checkpoint(run_checkpoint(stages["avg"]["outputs"]["run"]))["method"]
    key = next(k for k in avg if k.endswith("weight"))
    assert torch.allclose(avg[key], (rounds[0][key] + rounds[1][key]) / 2)
    assert not torch.allclose(avg[key], rounds[0][key])
    assert 0.0 <= stages["avg"]["dev"]["eer"] <= 100.0
    assert stages["labels3"]["outputs"]["model"] == stages["avg"]["outputs"]["run"]
    assert stages["backend"]["outputs"]["model"] == stages["avg"]["outputs"]["run"]
    calibrated = {e.path for e in read_manifest(stages["backend"]["outputs"]["held_out"])}
    assert calibrated and calibrated <= unseen
    assert report["final"]["encoder_from"] == "avg"
