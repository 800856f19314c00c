"""Loading a trained run: a run of the other task, or one without weights, is refused clearly."""

import pytest
import yaml

from tasks.cli import main
from tasks.registry import load_trained
from unitransformer.errors import UserError


def _run_dir(tmp_path, task):
    run = tmp_path / task
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"task": task}))
    return run


def test_a_run_of_the_other_task_is_refused(tmp_path):
    image_run = _run_dir(tmp_path, "image_classification")
    with pytest.raises(
        UserError, match="'image_classification' run; the command needs a 'translation'"
    ):
        load_trained(image_run, expect_task="translation")
    text_run = _run_dir(tmp_path, "translation")
    with pytest.raises(UserError, match="needs a 'image_classification' run"):
        load_trained(text_run, expect_task="image_classification")


def test_a_run_without_checkpoints_is_refused_before_building_assets(tmp_path):
    run = _run_dir(tmp_path, "translation")
    with pytest.raises(UserError, match="no checkpoint yet"):
        load_trained(run)
    assert not (run / "tokenizer").exists()  # no tokenizer was trained as a side effect


def test_the_commands_print_one_line(tmp_path, capsys):
    image_run = _run_dir(tmp_path, "image_classification")
    assert main(["translate", str(image_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "translation" in err[0]
    assert main(["classify", str(_run_dir(tmp_path, "translation")), "x.png"]) == 2
    assert "image_classification" in capsys.readouterr().err
