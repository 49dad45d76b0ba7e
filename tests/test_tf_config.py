"""TF_CONFIG is checked for its shape: one line naming TF_CONFIG, exit 2, no traceback."""
import json
import os

import pytest

from conftest import REPO_ROOT, run_script
from deeplab_resnet import distributed

TWO = ["127.0.0.1:2222", "127.0.0.1:2223"]


def config(workers=TWO, index=0, **task):
    return {"cluster": {"worker": workers}, "task": dict({"type": "worker", "index": index},
                                                         **task)}


@pytest.mark.parametrize("value, message", [
    ([1, 2], "TF_CONFIG must look like {\"cluster\""),
    (None, "; it is null."),
    ({"cluster": {"worker": TWO}, "task": [0]}, 'its "task" is a list.'),
    ({"cluster": 5, "task": {"type": "worker", "index": 0}}, 'its "cluster" is a number.'),
    (config(workers=5), 'its "worker" is 5, not a list of "host:port" strings.'),
    (config(workers="127.0.0.1:2222"), 'its "worker" is "127.0.0.1:2222", not a list'),
    (config(workers=["127.0.0.1"]), 'not a list of "host:port" strings'),
    (config(workers=["127.0.0.1:99999", "127.0.0.1:2"]), 'not a list of "host:port"'),
    (config(index=True), 'task "index" must be a whole number'),
    (config(index="0"), 'must be a whole number (this worker\'s place in "worker"), '
                        'not a string "0".'),
    (config(index=2), "task index 2 is not in 0..1."),
    (config(workers=["127.0.0.1:2222", "localhost:2222"]),
     "workers 0 (127.0.0.1:2222) and 1 (localhost:2222) are the same port of one machine"),
    (config(workers=["127.0.0.1:2222", "127.0.0.1:2222"]), "the same port of one machine"),
])
def test_a_malformed_tf_config_is_named(value, message):
    with pytest.raises(ValueError) as error:
        distributed.task_from_env({"TF_CONFIG": json.dumps(value)})
    assert message in str(error.value)
    assert "TF_CONFIG" in str(error.value)


def test_a_good_tf_config_reads():
    task = distributed.task_from_env({"TF_CONFIG": json.dumps(config(index=1))})
    assert task.workers == tuple(TWO) and task.index == 1
    other_hosts = ["10.0.0.1:2222", "10.0.0.2:2222"]
    assert distributed.task_from_env(
        {"TF_CONFIG": json.dumps(config(workers=other_hosts))}).num_workers == 2


@pytest.mark.parametrize("script", ["train", "evaluate"])
def test_scripts_stop_on_it_in_one_line(script, monkeypatch, caplog, capsys):
    monkeypatch.setenv("TF_CONFIG", json.dumps(config(workers=5)))
    argv = [] if script == "train" else ["--restore-from", "w.npz"]
    assert run_script(os.path.join(REPO_ROOT, script + ".py"), argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= 40]
    assert len(errors) == 1 and "TF_CONFIG" in errors[0], errors
    assert "Traceback" not in capsys.readouterr().err
