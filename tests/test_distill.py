"""Distilled students: `tusou distill` trains one toward its teacher's vectors, the folder it writes is a
model, and that model searches the teacher's indexes as they are (and no other model's)."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retrieval.errors import TusouError
from retrieval.models.footprint import measure, text_flops
from retrieval.models.model import load_model
from retrieval.models.registry import STUDENT_FILE, STUDENT_WEIGHTS, get_entry
from retrieval.models.student import student_text
from tests.test_cli import json_lines, run
from train.distill import DistillConfig, _split, distill, held_out_cosine
from train.texts import read_texts

TEXTS = ["synthetic:1500"]


def settings(out, **changes) -> DistillConfig:
    return DistillConfig(**{"teacher": "demo", "student": "L1-H64", "texts": TEXTS, "out": out, "steps": 30, "batch_size": 32,
                            "lr": 3e-3, "warmup_steps": 5, "random": True, "device": "cpu", "checkpoint_every": 10, **changes})


@pytest.fixture(scope="module")
def demo_student(tmp_path_factory):
    """A student of `demo` distilled for 30 steps, and its log."""
    out = tmp_path_factory.mktemp("students") / "demo-L1-H64"
    return out, distill(settings(out), progress=False)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, image_folder):
    index = tmp_path_factory.mktemp("tiny-index") / "index"
    assert run_cli("index", image_folder, "--out", index, "--model", "test-tiny", "--device", "cpu", "--workers", "0") == 0
    return index


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    out = tmp_path_factory.mktemp("students") / "tiny-L1-H64"
    distill(settings(out, teacher="test-tiny", steps=10, texts=["synthetic:400"]), progress=False)
    return out


def run_cli(*argv):
    from ui.cli import main

    return main([str(a) for a in argv])


def test_a_student_moves_toward_its_teachers_vectors(demo_student):
    out, log = demo_student
    texts = read_texts(TEXTS)
    held, _ = _split(len(texts), 0)
    teacher = np.load(out / "teacher.npy")
    untrained = student_text(get_entry("demo-student-L1-H64"), None, projection=False)
    before = held_out_cosine(untrained, [texts[i] for i in held], teacher[held])
    after = [record["held_out_cosine"] for record in log if "held_out_cosine" in record]
    assert len(after) == 3 and after[-1] > before + 0.3, (before, after)
    assert log[-1]["loss"] < log[0]["loss"]
    described = json.loads((out / STUDENT_FILE).read_text())
    teacher_model = load_model("demo", device="cpu")
    assert described["model"] == "demo-student-L1-H64" and described["teacher"] == "demo"
    assert described["teacher_fingerprints"] == {"text": teacher_model.text_fingerprint(), "image": teacher_model.image_fingerprint()}
    assert np.allclose(teacher, teacher_model.encode_texts(texts), atol=1e-5), "the cached vectors are the teacher's own"


def test_the_folder_is_a_model_with_the_teachers_image_tower(demo_student):
    out, log = demo_student
    student, teacher = load_model(str(out), device="cpu"), load_model("demo", device="cpu")
    assert student.name == "demo-student-L1-H64" and student.dim == teacher.dim == 128
    assert student.image_fingerprint() == teacher.image_fingerprint() and student.text_fingerprint() != teacher.text_fingerprint()
    picture = torch.rand(1, 3, teacher.image_size, teacher.image_size)
    assert np.allclose(student.encode_pixels(picture), teacher.encode_pixels(picture), atol=1e-6)
    texts = read_texts(TEXTS)
    held = [texts[i] for i in _split(len(texts), 0)[0]]
    cosine = np.mean(np.sum(student.encode_texts(held) * teacher.encode_texts(held), axis=1))
    assert cosine == pytest.approx(log[-1]["held_out_cosine"], abs=1e-4), "the folder holds the last step's weights"
    texts = ["红色的圆形", "两个蓝色的三角形"]
    alone = np.concatenate([student.encode_texts([t]) for t in texts])
    assert np.allclose(alone, student.encode_texts(texts), atol=1e-5), "padding to the batch's longest text changes no vector"


def test_a_killed_run_resumes_exactly(tmp_path, demo_student):
    halves = tmp_path / "halves"
    distill(settings(halves, max_steps=20), progress=False)  # stops after its checkpoint at step 20, as a kill after it would
    resumed = distill(settings(halves), progress=False)
    whole = demo_student[0]
    assert [r["step"] for r in resumed] == list(range(1, 31))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in demo_student[1]], abs=1e-4)
    a, b = (load_file(folder / STUDENT_WEIGHTS / "model.safetensors") for folder in (whole, halves))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    with pytest.raises(TusouError, match="other settings"):
        distill(settings(halves, lr=1e-2), progress=False)


def test_a_student_searches_its_teachers_index_and_no_other(capsys, tiny_index, tiny_student, demo_student, image_folder):
    code, out, err = run(capsys, "search", tiny_index, "红色的圆", "--model", tiny_student, "--json", "-k", "5", "--device", "cpu")
    assert code == 0 and len(json_lines(out)) == 5, err
    image = next(p for p in sorted(image_folder.rglob("*.png")))
    code, out, err = run(capsys, "search", tiny_index, "--image", image, "--model", tiny_student, "--json", "-k", "1", "--device", "cpu")
    assert code == 0 and json_lines(out)[0]["score"] == pytest.approx(1.0, abs=1e-3), "the teacher's image tower, checked"
    code, _, err = run(capsys, "search", tiny_index, "红色", "--model", demo_student[0], "--device", "cpu")
    assert code == 2 and "built with model 'test-tiny'" in err and "student of 'demo'" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "index", image_folder, "--out", tiny_index, "--model", tiny_student)
    assert code == 2 and "is a student: build the index with its teacher, --model test-tiny" in err


def test_a_student_distilled_beside_other_image_weights_is_refused(capsys, tmp_path, tiny_index, tiny_student):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_student, other)
    described = json.loads((other / STUDENT_FILE).read_text())
    described["teacher_fingerprints"]["image"] = "0" * 16
    (other / STUDENT_FILE).write_text(json.dumps(described))
    code, _, err = run(capsys, "search", tiny_index, "红色", "--model", other, "--device", "cpu")
    assert code == 2 and "other image weights of 'test-tiny'" in err and len(err.splitlines()) == 1


def test_distill_through_the_cli_and_its_mistakes(capsys, tmp_path, hub_cache):
    code, out, err = run(capsys, "distill", "--teacher", "test-tiny", "--student", "L1-H64", "--random", "--texts", "synthetic:300",
                         "--out", tmp_path / "s", "--steps", "3", "--batch-size", "16", "--device", "cpu")
    assert code == 0 and "after 3 steps, held-out cosine to test-tiny" in out and f"--model {tmp_path / 's'}" in out, err
    base = ["--teacher", "demo", "--texts", "synthetic:100", "--out", tmp_path / "x"]
    for argv, message in [
        (["--student", "L4-H128"], "uer/chinese_roberta_L-4_H-128 is not in the Hugging Face cache"),
        (["--student", "L3-H64"], "UER published no miniature of that size"),
        (["--student", "huge"], "name an architecture L<layers>-H<width>"),
        (["--student", "L1-H64", "--random", "--teacher", "cn-clip-b16"], "must be a BERT + open_clip model"),
        (["--student", "L1-H64", "--random", "--texts", tmp_path / "none.txt"], "no such file"),
    ]:
        code, _, err = run(capsys, "distill", *base, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    _, _, err = run(capsys, "distill", *base, "--student", "L4-H128")
    assert "the student 'demo-student-L4-H128' starts from it" in err and "add --random" in err
    assert not (tmp_path / "x").exists(), "a mistake writes nothing"


def test_texts_come_from_each_source_layout(tmp_path):
    (tmp_path / "plain.txt").write_text("一只猫\n\n  一只   狗 \n一只猫\n", encoding="utf-8")
    (tmp_path / "flickr.txt").write_text("1000092795.jpg#0\t两个年轻人在院子里\n1000092795.jpg#1\t一个男人\n", encoding="utf-8")
    (tmp_path / "test_texts.jsonl").write_text(json.dumps({"text_id": 1, "text": "一座桥", "image_ids": [3]}, ensure_ascii=False) + "\n")
    with open(tmp_path / "wukong.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["url", "caption"], ["http://x/1.jpg", "海边的日落"]])
    with tarfile.open(tmp_path / "shard.tar", "w") as shard:
        for key, text in (("000", "一辆红色的车"), ("001", "雪山")):
            data = text.encode()
            member = tarfile.TarInfo(f"{key}.txt")
            member.size = len(data)
            shard.addfile(member, io.BytesIO(data))
            shard.addfile(tarfile.TarInfo(f"{key}.jpg"), io.BytesIO(b""))
    sources = [str(tmp_path / name) for name in ("plain.txt", "flickr.txt", "test_texts.jsonl", "wukong.csv", "shard.tar")]
    assert read_texts(sources) == ["一只猫", "一只 狗", "两个年轻人在院子里", "一个男人", "一座桥", "海边的日落", "一辆红色的车", "雪山"]
    assert len(read_texts(["synthetic:50"])) <= 50 and read_texts(["synthetic:50"]) == read_texts(["synthetic:50"])
    (tmp_path / "bad.csv").write_text("url,text\nx,y\n")
    with pytest.raises(TusouError, match="needs a caption column"):
        read_texts([str(tmp_path / "bad.csv")])


def test_students_are_listed_with_their_share_of_the_teachers_flops(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = {row["name"]: row for row in json_lines(out)}
    student = rows["taiyi-clip-l14-student-L4-H512"]
    assert code == 0 and len([name for name in rows if "-student-" in name]) == 24
    assert student["teacher"] == "taiyi-clip-l14" and student["present"] is False and student["text"].endswith("hub:uer/chinese_roberta_L-4_H-512")
    assert 0.14 < student["teacher_flops_share"] < 0.16, "L4/H512 costs about a seventh of BERT-base (13.3 GFLOP at 77 tokens)"
    assert text_flops(get_entry("taiyi-clip-l14")) == pytest.approx(13.3e9, rel=0.01)
    code, out, _ = run(capsys, "models", "demo-student-L2-H64")
    assert code == 0 and out.splitlines()[1].split()[:4] == ["demo-student-L2-H64", "128", "122K", "13.0%"]
    assert measure("demo-student-L2-H64").parameters == get_entry("demo-student-L2-H64").parameters


def test_serve_answers_with_a_student_of_the_index_model(capsys, tiny_index, tiny_student, tmp_path):
    import httpx

    from tests.uiserver import UIServer

    code, out, _ = run(capsys, "search", tiny_index, "蓝色的方块", "--model", tiny_student, "--json", "-k", "4", "--device", "cpu")
    expected = json_lines(out)
    server = UIServer(tiny_index, "--model", str(tiny_student))
    try:
        found = httpx.get(server.url + "api/v1/search", params={"q": "蓝色的方块", "k": 4}, timeout=60).json()["results"]
        info = httpx.get(server.url + "api/v1/info", timeout=60).json()
    finally:
        server.stop()
    assert [r["path"] for r in found] == [r["path"] for r in expected]
    assert [r["score"] for r in found] == pytest.approx([r["score"] for r in expected], abs=1e-4)
    assert info["index"]["model"]["name"] == "test-tiny" and info["query_model"] == "test-tiny-student-L1-H64"
    code, _, err = run(capsys, "serve", tiny_index, "--model", tiny_student, "--watch", tmp_path)
    assert code == 2 and "is a student: serve the student without --watch" in err


def test_eval_puts_a_teacher_and_its_student_in_one_table(capsys, tmp_path, tiny_student):
    from retrieval.datasets.synthetic import write_dataset

    write_dataset(tmp_path / "set", {"test": 40}, image_size=32)
    code, out, err = run(capsys, "eval", "--dataset", "flickr30k-cn", "--data", tmp_path / "set", "--model", f"test-tiny,{tiny_student}",
                         "--device", "cpu", "--no-cache")
    assert code == 0, err
    rows = [line.split()[0] for line in out.splitlines()[2:4]]
    assert rows == ["test-tiny", "test-tiny-student-L1-H64"]


def test_a_student_runs_in_onnx_runtime_with_the_ids_torch_gives(capsys, tiny_index, tiny_student, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    answers = []
    for runtime in ("torch", "onnx"):
        code, out, err = run(capsys, "search", tiny_index, "黄色的星形", "--model", tiny_student, "--runtime", runtime, "--json", "-k", "5",
                             "--device", "cpu")
        assert code == 0, err
        answers.append(json_lines(out))
    assert [r["id"] for r in answers[0]] == [r["id"] for r in answers[1]]
    assert [r["score"] for r in answers[0]] == pytest.approx([r["score"] for r in answers[1]], abs=1e-4)
