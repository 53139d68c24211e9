"""dsm.cli's own commands (the others are tested beside their packages)."""

import re
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from dsm.runtime.cluster import free_port


@pytest.mark.slow
def test_ui_stops_its_whole_process_group_on_sigterm(tmp_path):
    """`dsm ui` stopped with SIGTERM must take MLflow's server and every process it
    forked along, and start none of MLflow's GenAI job consumers. Served on every address
    (--host 0.0.0.0), which it says is unauthenticated."""
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "dsm.cli", "ui", "--workspace", str(tmp_path / "ws"),
                           "--port", str(port), "--host", "0.0.0.0"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        ui.kill()
        pytest.fail("the MLflow UI did not answer: " + ui.stdout.read()[-2000:])
    tree = psutil.Process(ui.pid).children(recursive=True)
    assert tree, "dsm ui started no server"
    assert not [p for p in tree if "huey" in " ".join(p.cmdline())], "MLflow job consumers were started"
    assert any("--host 0.0.0.0" in " ".join(p.cmdline()) for p in tree)
    ui.send_signal(signal.SIGTERM)
    ui.wait(30)
    said = ui.stdout.read()
    assert "dsm ui: serving on 0.0.0.0: anyone who can reach it can read and change the runs" in said
    assert "MLflow UI: http://127.0.0.1:" not in said  # the URL names an address others can reach
    gone, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]


def test_ui_takes_another_port_when_its_own_is_busy_and_says_which(capsys):
    import socket

    from dsm.cli import _ui_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        other = _ui_port("127.0.0.1", taken)
    assert other != taken
    assert capsys.readouterr().err.strip() == f"dsm ui: port {taken} is in use; serving on {other}"
    assert _ui_port("127.0.0.1", other) == other  # a free port is kept


def test_ui_url_opens_the_experiments_runs_in_the_model_training_view(tmp_path):
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import tracking_uri, ui_url, use_experiment

    assert ui_url(5000, "dsm-train", tmp_path) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    eid = use_experiment("dsm-train", tmp_path, MlflowClient(tracking_uri(tmp_path)))
    assert ui_url(5000, "dsm-train", tmp_path) == (f"http://127.0.0.1:5000/#/experiments/{eid}/runs"
                                                   "?workflowType=machine_learning")


def test_dsm_alone_lists_the_commands_and_version_says_the_installed_one(capsys):
    from dsm import __version__
    from dsm.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("data", "train", "tune", "normalize", "score", "report", "submit", "ui"):
        assert re.search(rf"\n    {command}\s", out), command
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dsm {__version__}"
    from importlib.metadata import version

    assert __version__ == version("dsm") and __version__[0].isdigit()


def test_a_wildcard_ui_address_prints_one_that_others_can_reach():
    from dsm.runtime.tracking import ui_url

    url = ui_url(5000, "dsm-train", None, host="0.0.0.0")
    host = url.removeprefix("http://").split(":")[0]
    assert host not in ("0.0.0.0", "127.0.0.1", "") and url.endswith("?workflowType=machine_learning")
    assert ui_url(5000, "x", None, host="::1").startswith("http://[::1]:5000/")



def _options(parser, path):
    """(command, flag, help) of every option of every subcommand that takes a value."""
    import argparse

    flags = (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, [*path, name])
        elif (action.option_strings and not isinstance(action, flags) and not action.required
              and action.help != argparse.SUPPRESS):  # an old name kept for a release is not shown
            yield " ".join(path), action.option_strings[-1], action.help or ""


def test_every_option_says_its_default():
    from dsm.cli import build_parser

    silent = [f"{cmd} {flag}" for cmd, flag, text in _options(build_parser(), ["dsm"]) if "default" not in text]
    assert not silent, silent
    assert len(list(_options(build_parser(), ["dsm"]))) > 60  # the walk reaches every subcommand


def test_an_old_option_name_still_works_for_a_release_and_says_the_new_one(capsys):
    from dsm.cli import build_parser, parse_args

    parser = build_parser()
    args = parse_args(parser, ["report", "scores", "--n-noise", "3", "--t-min", "1e-3"])
    assert (args.noise_samples, args.smooth_t) == (3, 1e-3)
    err = capsys.readouterr().err
    assert "--n-noise is now --noise-samples" in err and "--t-min is now --smooth-t" in err
    assert parse_args(parser, ["sample", "m.pt", "--n", "1", "--seed", "0", "--gpu"]).device == "cuda"
    assert "--gpu is now --device" in capsys.readouterr().err
    assert parse_args(parser, ["sample", "m.pt", "--n", "1", "--seed", "0"]).device == "cpu"
    assert "--n-noise" not in parser._subparsers._group_actions[0].choices["report"].format_help()
