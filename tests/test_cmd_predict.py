"""``attnlab predict`` for a task that has ``predict`` but no command-line entry of its own
(``cmd_predict.PER_TASK``): no options, predictions printed as JSON, no KeyError."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

from torch import nn

import attnlab.runs
from attnlab.cli import cmd_predict
from attnlab.cli.main import main
from attnlab.tasks import get_spec
from attnlab.tasks.spec import LoadedRun


def test_a_task_without_an_entry_prints_json(monkeypatch):
    calls = []

    def predict(run, inputs, **options):
        calls.append(options)
        return [{"input": x, "answer": 7} for x in inputs]

    spec = dataclasses.replace(get_spec("image"), name="toy_task", predict=predict)
    assert spec.name not in cmd_predict.PER_TASK
    monkeypatch.setattr(attnlab.runs, "task_of", lambda run_dir: spec)
    monkeypatch.setattr(attnlab.runs, "open", lambda *a, **k: LoadedRun(nn.Identity(), "toy", spec=spec))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["predict", "RUN", "a.txt", "b.txt"])
    assert code == 0
    assert calls == [{}]  # no options of another task leak in
    assert json.loads(out.getvalue()) == [{"input": "a.txt", "answer": 7}, {"input": "b.txt", "answer": 7}]
