"""Install and command-line conventions: the declared torch range and extras, inference without the
training and plotting extras, one-line messages naming a missing extra, the LICENSE, recipes
installed with the package and found by name, ``from sslspeaker import SpeakerEncoder``, common
options after the sub-command and help for every option."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sslspeaker.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
HEAVY = ("sklearn", "scipy", "matplotlib")


def _requirements() -> tuple[list[str], dict]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"], project["optional-dependencies"]


def _names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_pyproject_declares_a_torch_range_and_a_light_core():
    deps, extras = _requirements()
    assert [r for r in deps if r.startswith("torch")] == ["torch>=2.6,<3"]  # a range, not the machines' pin
    assert _names(deps) == {"torch", "numpy", "soundfile", "soxr", "safetensors", "pyyaml", "tqdm"}
    assert _names(extras["train"]) == {"scipy", "scikit-learn"} and _names(extras["plots"]) == {"matplotlib"}
    assert _names(extras["export"]) == {"onnx", "onnxruntime", "onnxscript"}
    assert _names(extras["kaldi"]) == {"kaldiio"}
    assert {"pytest", "scipy", "scikit-learn", "matplotlib"} <= _names(extras["dev"])  # the suite's needs


def test_readme_commands_keep_the_pin_and_install_the_extras_they_need():
    readme = (ROOT / "README.md").read_text()
    blocks = {}
    for marker in ("run-command", "test-command"):
        after = readme.split(f"<!-- {marker} -->", 1)[1]
        blocks[marker] = after.split("```")[1]
    assert 'pip install torch==2.13.0 -e ".[train,plots]"' in blocks["run-command"]
    assert "sslspeaker demo" in blocks["run-command"]
    assert 'pip install torch==2.13.0 -e ".[dev,export]"' in blocks["test-command"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # CI runs the README's test command verbatim


def test_license_file_matches_the_declared_licence():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in pyproject
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


BLOCK = "import sys\nfor m in ('sklearn', 'scipy', 'matplotlib'):\n    sys.modules[m] = None  # not installed\n"


def test_import_sslspeaker_is_light_and_exports_the_speaker_encoder(tmp_path):
    r = _run_python("import sys, sslspeaker\nprint(sorted(m for m in ('torch',) if m in sys.modules))\n"
                    "from sslspeaker import SpeakerEncoder\nfrom sslspeaker.inference import SpeakerEncoder as S\n"
                    "print(SpeakerEncoder is S, SpeakerEncoder.__name__)", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "True SpeakerEncoder"]


def test_inference_embed_verify_and_cosine_evaluate_work_without_the_extras(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(str(tmp_path / f"u{i}.wav"), (0.1 * rng.standard_normal(16000 * 2)).astype(np.float32), 16000)
    (tmp_path / "trials.txt").write_text("1 u0.wav u1.wav\n0 u0.wav u2.wav\n1 u1.wav u2.wav\n0 u2.wav u0.wav\n")
    code = BLOCK + """
import json
from sslspeaker import SpeakerEncoder
from sslspeaker.cli import main
from sslspeaker.evaluation.evaluate import evaluate
enc = SpeakerEncoder.load(None)
v = enc.embed("u0.wav")
score, same = enc.verify("u0.wav", "u1.wav", threshold=0.5)
res = evaluate(enc, "trials.txt", ".", out="res/results.json", cache=False, progress=False, backend="cosine")
rc = main(["embed", "u0.wav", "u1.wav", "--out", "emb", "--format", "npz"])
loaded = [m for m in ('sklearn', 'scipy', 'matplotlib') if sys.modules.get(m) is not None]
print(json.dumps({"norm": float((v ** 2).sum()), "score": score, "eer": res["eer"], "min_cllr": res["min_cllr"],
                  "plots": res["plots"], "missing": res["plots_missing"], "rc": rc, "loaded": loaded}))
"""
    r = _run_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["norm"] == pytest.approx(1.0, abs=1e-5) and -1.0 <= out["score"] <= 1.0
    assert 0.0 <= out["eer"] <= 100.0 and out["min_cllr"] >= 0.0  # min Cllr by the numpy PAV, no scikit-learn
    assert out["plots"] == {"scores": None, "det": None} and "pip install 'sslspeaker[plots]'" in out["missing"]
    assert out["rc"] == 0 and (tmp_path / "emb" / "embeddings.npz").is_file() and out["loaded"] == []
    assert "no plots: plots needs the plots extra" in r.stderr  # one warning, no traceback


@pytest.mark.parametrize("argv, extra, module", [
    (["synth", "corpus", "--speakers", "1", "--utterances", "1"], "train", "scipy"),
    (["plot", "a.json", "--out", "det.pdf"], "plots", "matplotlib"),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, argv, extra, module):
    (tmp_path / "a.json").write_text(json.dumps({"det": {"p_fa": [1.0, 0.0], "p_miss": [0.0, 1.0]}, "eer": 10.0}))
    r = _run_python(BLOCK + f"from sslspeaker.cli import main\nsys.exit(main({argv!r}))", tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: {'this command' if extra == 'train' else 'plots'} needs the {extra} extra ({module} is not "
        f"installed): pip install 'sslspeaker[{extra}]'"]


def test_require_extra_names_the_feature_and_the_extra(monkeypatch):
    from sslspeaker.errors import MissingExtraError, missing_extra, require_extra

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.discriminant_analysis", None)  # imported by earlier tests, maybe
    with pytest.raises(MissingExtraError, match=r"^the lda back-end needs the train extra \(sklearn is not "
                                                r"installed\): pip install 'sslspeaker\[train\]'$"):
        require_extra("sklearn.discriminant_analysis", "the lda back-end")
    assert require_extra("json", "x") is json
    assert missing_extra(ModuleNotFoundError("No module named 'yaml'", name="yaml")) is None  # not an extra's
    assert "sslspeaker[export]" in str(missing_extra(ModuleNotFoundError("x", name="onnx.helper")))


def test_fitting_a_backend_without_the_train_extra_names_it(monkeypatch):
    from sslspeaker.backends import BackendChain
    from sslspeaker.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    x = np.random.default_rng(0).standard_normal((40, 4))
    with pytest.raises(MissingExtraError, match=r"fitting a back-end needs the train extra"):
        BackendChain.build("plda").fit(x, np.repeat(np.arange(8), 5))


# ---- recipes ---------------------------------------------------------------------------------
def test_recipes_are_in_the_package_and_the_repository_folder_links_to_them():
    from sslspeaker.config import packaged_recipes, recipe_folder

    assert recipe_folder() == SRC / "sslspeaker" / "configs"
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs").resolve() == recipe_folder()
    names = set(packaged_recipes())
    assert {"moco_speechocean762", "pipeline_speechocean762", "demo", "mocovox_voxceleb1"} <= names
    assert "sslspeaker = [\"py.typed\", \"configs/*.yaml\", \"pretrained/*\"]" in (ROOT / "pyproject.toml").read_text()


def test_a_recipe_is_found_by_name_and_a_path_wins(tmp_path, monkeypatch):
    from sslspeaker.config import ConfigError, find_recipe, load_config, recipe_folder
    from sslspeaker.pipeline.config import load_pipeline

    monkeypatch.setenv("SSLSPEAKER_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    packaged = recipe_folder() / "moco_speechocean762.yaml"
    assert find_recipe("moco_speechocean762") == packaged == find_recipe("moco_speechocean762.yaml")
    cfg = load_config("moco_speechocean762", ["train.batch_size=8"])
    assert cfg.method.name == "moco" and cfg.train.batch_size == 8
    assert load_config("moco_am_speechocean762").method.name == "moco"  # its base: is found beside it
    (tmp_path / "moco_speechocean762.yaml").write_text("train: {batch_size: 3}\n")  # a file here wins
    assert load_config("moco_speechocean762.yaml").train.batch_size == 3
    assert find_recipe("sub/moco_speechocean762.yaml") == Path("sub/moco_speechocean762.yaml")  # a path stays
    with pytest.raises(ConfigError, match=r"^nosuch: no such recipe \(not a file, nor a packaged recipe: "
                                          r"sslspeaker train --list names them\)$"):
        load_config("nosuch")
    pipe = load_pipeline("pipeline_speechocean762")
    assert Path(pipe.recipe_dir) == recipe_folder()  # its stage recipes are looked up beside it


def test_train_list_names_the_recipes_and_help_points_at_them(capsys):
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    train_part = out.split("train recipes (sslspeaker train NAME --out RUN_DIR; files in ")[1]
    train_rows, rest = train_part.split("pipeline recipes", 1)
    assert "\n  moco_speechocean762 " in train_rows and "\n  pipeline_speechocean762 " not in train_rows
    assert "\n  pipeline_speechocean762 " in rest.split("demo recipe")[0] and "\n  demo " in rest
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    config_help = next(a.help for a in sub.choices["train"]._actions if a.dest == "config")
    assert "packaged recipe" in config_help and "train --list" in config_help and "configs/" not in config_help


def test_train_by_name_without_out_is_one_line(capsys):
    assert main(["train", "moco_speechocean762"]) == 2
    assert capsys.readouterr().err.strip() == "error: train needs CONFIG and --out RUN_DIR (or --list)"


# ---- command-line conventions ---------------------------------------------------------------
def _subparsers() -> dict:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_verbose_and_quiet_are_accepted_before_and_after_the_sub_command():
    p = build_parser()
    for argv, verbose, quiet in ((["train", "--list", "-v"], True, False), (["-v", "train", "--list"], True, False),
                                 (["verify", "a", "b", "--quiet"], False, True),
                                 (["--quiet", "verify", "a", "b"], False, True),
                                 (["synth", "out", "--verbose"], True, False), (["synth", "out"], False, False),
                                 (["evaluate", "--trials", "t", "--audio-root", "r", "--quiet"], False, True),
                                 (["--quiet", "evaluate", "--trials", "t", "--audio-root", "r"], False, True),
                                 (["evaluate", "--trials", "t", "--audio-root", "r"], False, False)):
        args = p.parse_args(argv)
        assert (args.verbose, args.quiet) == (verbose, quiet), argv


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {a.option_strings or a.dest}" for name, sp in _subparsers().items() for a in sp._actions
               if a.dest != "help" and not (a.help or "").strip()]
    assert missing == []


def test_commands_with_a_device_default_to_auto():
    defaults = {name: next(a.default for a in sp._actions if a.dest == "device")
                for name, sp in _subparsers().items() if any(a.dest == "device" for a in sp._actions)}
    assert {"embed", "evaluate", "verify", "pseudolabel"} <= set(defaults)
    assert set(defaults.values()) == {"auto"}, defaults


def test_a_stored_lda_plda_back_end_scores_without_the_extras(tmp_path):
    from sslspeaker.backends import BackendChain

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 6))
    x = np.repeat(centres, 8, axis=0) + 0.3 * rng.standard_normal((80, 6))
    labels = np.repeat(np.arange(10), 8)
    chain = BackendChain.build("lda_plda").fit(x, labels)
    other = np.r_[4:80, 0:4]  # 4 utterances on: half the pairs share a speaker
    chain.calibrate(x, x[other], (labels == labels[other]).astype(int))
    assert chain.calibrated
    config, arrays = chain.to_state()
    np.savez(tmp_path / "state.npz", **arrays)
    (tmp_path / "config.json").write_text(json.dumps(config))
    np.save(tmp_path / "x.npy", x)
    expected = chain.score_pairs(x[:20], x[20:40])
    code = BLOCK + """
import json
import numpy as np
from sslspeaker.backends import BackendChain
arrays = dict(np.load("state.npz"))
chain = BackendChain.from_state(json.load(open("config.json")), arrays)
x = np.load("x.npy")
print(json.dumps([float(v) for v in chain.score_pairs(x[:20], x[20:40])]))
"""
    r = _run_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(json.loads(r.stdout.strip().splitlines()[-1]), expected, rtol=1e-9, atol=1e-9)
