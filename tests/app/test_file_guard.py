"""The app reads no file but uploads and examples: raw HTTP attacks on /explain and /compare.

One app is launched for the module (tiny `test_resnet`, random weights). Every request goes through
Gradio's public REST protocol with `requests` (POST /gradio_api/call/<api>, then the event stream),
the way an attacker would send it, with and without Gradio's ``meta`` field.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import running_app
from PIL import Image

from cnnviz import render
from cnnviz.app import guard
from cnnviz.app import settings as core

pytestmark = pytest.mark.app

SETTINGS = core.AppSettings(weights="random", allow_any_model=True, default_model="test_resnet")
META = {"_type": "gradio.FileData"}
EXAMPLE = core.EXAMPLES_DIR / "chelsea.jpg"


@pytest.fixture(scope="module")
def server():
    with running_app(SETTINGS) as url:
        yield url


@pytest.fixture(scope="module")
def cache() -> Path:
    import gradio as gr

    path = Path(gr.utils.get_upload_folder())
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> dict[str, Path]:
    """A real picture, a text file and a folder outside the upload cache, and a path that is not there."""
    folder = tmp_path_factory.mktemp("outside")
    secret = folder / "secret.png"
    Image.fromarray(np.full((40, 60, 3), (10, 200, 30), np.uint8)).save(secret)
    text = folder / "notes.txt"
    text.write_text("not for visitors\n")
    return {"image": secret, "text": text, "folder": folder, "missing": folder / "missing.png"}


def call(server: str, api: str, data: list, timeout: float = 120) -> tuple[str, object]:
    """(event, payload) of the last event of a /gradio_api/call request."""
    posted = requests.post(f"{server}/gradio_api/call/{api}", json={"data": data}, timeout=30)
    posted.raise_for_status()
    stream = requests.get(f"{server}/gradio_api/call/{api}/{posted.json()['event_id']}", timeout=timeout)
    event, payload = "", None
    for line in stream.text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            payload = json.loads(line.split(":", 1)[1])
    return event, payload


def explain_args(image: object) -> list:
    """/explain's inputs over raw HTTP: the seven named ones, then every method parameter's default."""
    params = [p.default for _, p in core.param_specs()]
    return [
        image,
        "test_resnet",
        ["grad_cam"],
        core.TOP1,
        core.FINAL_LABEL,
        render.COLORMAPS[0],
        0.0,
        *params,
    ]


def compare_args(image: object) -> list:
    return [image, ["test_resnet"], ["grad_cam"], render.COLORMAPS[0], 0.0, True]


ARGS = {"explain": explain_args, "compare": compare_args}


def upload(server: str, path: Path) -> str:
    with path.open("rb") as fh:
        response = requests.post(f"{server}/gradio_api/upload", files={"files": (path.name, fh)}, timeout=30)
    response.raise_for_status()
    return response.json()[0]


def attacks(outside: dict[str, Path], cache: Path, server: str) -> dict[str, str | None]:
    """Name -> path of each reference to refuse (None: a reference with no path, only a URL)."""
    secret = outside["image"]
    links = cache / f"cnnviz-test-{uuid.uuid4().hex}"
    links.mkdir()
    (links / "link.png").symlink_to(secret)
    (links / "folder").symlink_to(outside["folder"], target_is_directory=True)
    climb = "/".join([".."] * len(cache.resolve().parts))
    return {
        "absolute path to a real image": str(secret),
        "absolute path to a text file": str(outside["text"]),
        "absolute path to a folder": str(outside["folder"]),
        "absolute path that does not exist": str(outside["missing"]),
        "system file": "/etc/hostname",
        "cache/../ to the image": f"{cache}/{climb}{secret}",
        "cache/x/../../ to a missing file": f"{cache}/x/{climb}{outside['missing']}",
        "relative path to the image": os.path.relpath(secret, os.getcwd()),
        "relative ../ to a system file": f"{climb}/etc/hostname",
        "a shipped example named by its path": str(EXAMPLE),
        "examples/../ to the repository": str(core.EXAMPLES_DIR / ".." / "README.md"),
        "symlink in the cache to the image": str(links / "link.png"),
        "symlinked folder in the cache": str(links / "folder" / secret.name),
        "the cache folder itself": str(cache),
        "file:// URL of the image": secret.as_uri(),
        "http URL the server could fetch": f"{server}/gradio_api/file={upload(server, EXAMPLE)}",
        "NUL in the path": f"{cache}/a.png\x00.png",
        "empty path": "",
        "no path, a data: URL": None,
    }


def payloads(path: str | None) -> list[dict]:
    if path is None:
        data = "data:image/png;base64,iVBORw0KGgo="
        return [{"url": data}, {"url": data, "meta": META}]
    named = {"path": path, "orig_name": "cat.png", "meta": META}
    return [{"path": path}, {"path": path, "meta": META}, named]


@pytest.mark.parametrize("api", ["explain", "compare"])
def test_every_reference_outside_uploads_and_examples_gets_one_answer(server, outside, cache, api):
    answers = {}
    for name, path in attacks(outside, cache, server).items():
        for payload in payloads(path):
            event, data = call(server, api, ARGS[api](payload))
            answers[(name, json.dumps(payload)[:80])] = (event, data)
    wrong = {k: v for k, v in answers.items() if v[0] != "error" or v[1].get("error") != guard.REFUSED_FILE}
    assert not wrong, wrong  # each refused, with the same sentence whether or not the path exists
    assert all(v[1].get("title") in ("Image refused", "Input refused") for v in answers.values())
    assert all(set(v[1]) <= {"error", "title", "duration", "visible"} for v in answers.values())


def test_no_picture_of_a_refused_file_comes_back(server, outside):
    for payload in payloads(str(outside["image"])):
        event, data = call(server, "explain", explain_args(payload))
        assert event == "error" and isinstance(data, dict), (event, data)  # no outputs, only the refusal
        assert set(data) <= {"error", "title", "duration", "visible"} and "secret" not in json.dumps(data)


def test_an_upload_and_an_example_still_work(server, cache):
    path = upload(server, EXAMPLE)
    assert Path(path).resolve().is_relative_to(cache.resolve())
    for payload in ({"path": path, "meta": META, "orig_name": "chelsea.jpg"}, {"path": path}):
        event, data = call(server, "explain", explain_args(payload))
        assert event == "complete", data
        predictions, gallery = data[0], data[1]
        assert len(predictions["confidences"]) == 5 and len(gallery) == 1
    event, data = call(server, "compare", compare_args({"path": path, "meta": META}))
    assert event == "complete", data
    examples = requests.get(f"{server}/config", timeout=30).json()
    samples = next(c["props"]["samples"] for c in examples["components"] if c["type"] == "dataset")
    event, data = call(server, "explain", explain_args(samples[0][0]))  # as the page sends an example
    assert event == "complete", data


def test_the_file_route_serves_nothing_outside_the_cache(server, outside):
    for path in (outside["image"], outside["missing"], Path("/etc/hostname")):
        response = requests.get(f"{server}/gradio_api/file={path}", timeout=30)
        assert response.status_code in (403, 404) and not response.content.startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- the gate, no server


def test_gate_resolves_inside_its_folders_only(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "sub").mkdir()
    inside = root / "sub" / "a.png"
    inside.write_bytes(b"x")
    secret = elsewhere / "b.png"
    secret.write_bytes(b"y")
    (root / "escape.png").symlink_to(secret)
    (root / "inner.png").symlink_to(inside)
    gate = guard.FileGate([root])
    assert gate.resolve({"path": str(inside)}) == inside.resolve()
    assert gate.resolve({"path": str(root / "inner.png")}) == inside.resolve()  # a link that stays inside
    assert gate.resolve({"path": f"{root}/sub/../sub/a.png"}) == inside.resolve()
    for bad in [
        str(secret), str(root / "escape.png"), f"{root}/../elsewhere/b.png", str(root), str(root / "sub"),
        str(root / "missing.png"), f"file://{inside}", f"http://x/{inside}", 42, None, "x" * 5000,
    ]:  # fmt: skip
        with pytest.raises(guard.Refused) as err:
            gate.resolve({"path": bad})
        assert str(err.value) == guard.REFUSED_FILE


def test_check_references_finds_nested_files(tmp_path):
    inside = tmp_path / "a.png"
    inside.write_bytes(b"x")
    gate = guard.FileGate([tmp_path])
    assert guard.check_references(["text", 3, None, {"value": [{"path": str(inside)}]}], gate) == 1
    with pytest.raises(guard.Refused):
        guard.check_references({"value": [{"path": str(inside)}, {"path": "/etc/hostname"}]}, gate)
    deep: object = {"path": str(inside)}
    for _ in range(20):
        deep = [deep]
    with pytest.raises(guard.Refused):
        guard.check_references(deep, gate)


# ----------------------------------------------------------------------------- text, lists, numbers


def test_text_lists_and_numbers_are_bounded_before_any_work(server):
    cases = {
        1: ("x" * 1_000_000, "Model: 'xxxxxxxxx"),
        2: (["grad_cma"], "Methods: 'grad_cma' is not offered here. Close matches: grad_cam"),
        3: ({"name": "tabby"}, "Target class: expected text, got a value of type dict"),
        5: ("jett", "Colormap: 'jett' is not offered here. Close matches: jet"),
        6: (7.0, "Overlay strength: 7 is outside 0 to 1."),
    }
    for index, (value, expected) in cases.items():
        data = explain_args(None)
        data[index] = value
        event, answer = call(server, "explain", data)
        assert event == "error" and answer["error"].startswith(expected), (index, answer)
        assert len(answer["error"]) < 200  # a megabyte string is quoted as 40 characters at most
    for value, expected in [(5, "expected text, got a value of type int"), ("a\x00b", "control characters")]:
        data = explain_args(None)
        data[1] = value
        assert expected in call(server, "explain", data)[1]["error"]
    event, answer = call(server, "explain", explain_args(None)[:3])
    assert answer["error"] == f"This request needs {len(explain_args(None))} input values."
    data = compare_args(None)
    data[5] = "yes"
    assert call(server, "compare", data)[1]["error"].endswith("expected true or false, got 'yes'.")


def test_many_refused_names_do_not_grow_the_server(server):
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    data = explain_args(None)
    call(server, "explain", data)
    before = rss()
    for i in range(60):
        data[1] = f"{i:03d}" + "y" * 200_000
        assert "too long" in call(server, "explain", data)[1]["error"]
    assert rss() - before < 40 * 2**20  # 60 requests of 200 kB each: nothing of them is kept


def test_a_curated_deployment_answers_unknown_names_with_close_matches():
    from cnnviz.app import ui

    ids = [mid for _, mid in core.model_choices()]
    strict = core.AppSettings(weights="random", allow_any_model=False, default_model=ids[0])
    demo = ui.build(strict)
    dropdowns = [b for b in demo.blocks.values() if getattr(b, "label", "") == "Model"]
    field = ui.field_of(dropdowns[0])
    field.check(ids[-1])
    typo = ids[0].split(".")[0][:-1]  # "resnet5" for "resnet50.a1_in1k"
    with pytest.raises(guard.Refused) as err:
        field.check(typo)
    message = str(err.value)
    assert message.startswith(f"Model: {typo!r} is not offered here. Close matches: {ids[0]}")
    assert len(message) < 200 and ids[-1] not in message  # not the list of every id


def test_uploads_larger_than_the_limit_are_refused(server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * (guard.MAX_FILE_MB * 2**20 + 1))
    with big.open("rb") as fh:
        response = requests.post(f"{server}/gradio_api/upload", files={"files": (big.name, fh)}, timeout=60)
    assert response.status_code == 413
