"""Tests for pipeline.tune on real storage: the embedded SQLite file and a throw-away PostgreSQL server,
worker processes sharing one study, recovery after kill -9, the outputs and their use by train."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import keras
import optuna
import pytest
import yaml

from pipeline import augment, ingest, params, paths, tune
from pipeline.lib.device import Gpu, Hardware, detect
from pipeline.lib.members import member_settings
from pipeline.train import read_tuned
from tests.conftest import dump_params

SQLITE = "sqlite:///data/processed/optuna.db"
PG_PASSWORD = "Tun3-s3cret"


def set_params(section: str, **values: object) -> None:
    """Update `section` of the project's params.yaml with `values`."""
    doc = yaml.safe_load(paths.PARAMS.read_text())
    doc[section].update(values)
    dump_params(doc, paths.PARAMS)  # derived: as the composition writes it


def only_study(url: str = SQLITE) -> optuna.Study:
    """Return the single study stored at `url`."""
    storage = optuna.storages.RDBStorage(url)
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage)


def states(study: optuna.Study) -> Counter:
    """Return the number of trials of `study` per state name."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def finished(study: optuna.Study) -> int:
    """Return the completed plus pruned trials of `study`."""
    counts = states(study)
    return counts["COMPLETE"] + counts["PRUNED"]


def workers_of(study: optuna.Study) -> set[str]:
    """Return the distinct workers (host:pid) that ran the finished trials of `study`."""
    return {t.user_attrs["worker"] for t in study.get_trials(deepcopy=False, states=tune.FINISHED)}


@pytest.fixture
def tune_project(project: Path) -> Path:
    """The tiny project with its npz files built and tuning shrunk to 1-epoch trials and 1 s heartbeats."""
    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    set_params("tune", epochs=1, trials=2, heartbeat_seconds=1, grace_seconds=30)
    return project


# ---------------------------------------------------------------- search space and storage URLs (no training)


def test_model_space_replaces_and_drops_settings(project: Path) -> None:
    cfg = params.load("tune")
    assert tune.resolve_space(cfg, "dropout_cnn") == cfg.space
    mlp = tune.resolve_space(cfg, "mlp")
    assert "dropout_conv" not in mlp and "dropout_dense" not in mlp
    assert mlp["learning_rate"] == cfg.space["learning_rate"]
    set_params("tune", model_space={"bn_cnn": {"batch_size": {"choices": [32]}}})
    assert tune.resolve_space(params.load("tune"), "bn_cnn")["batch_size"] == {"choices": [32]}


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("momentum", [0.1, 0.9], "not a tunable setting"),
        ("learning_rate", [0.01, 0.001], "low < high"),
        ("learning_rate", [0.001, 0.01, "exp"], "[low, high, log]"),
        ("batch_size", {"options": [64]}, "{choices: [a, b, ...]}"),
    ],
)
def test_invalid_space_is_a_clear_error(project: Path, capsys, name: str, spec: object, message: str) -> None:
    set_params("tune", space={name: spec})
    assert tune.main([]) == 2
    err = capsys.readouterr().err
    assert f"tune.space.{name}" in err and message in err


def test_defaults_outside_the_space_are_left_to_the_sampler(project: Path) -> None:
    space = params.load("tune").space
    set_params("train", batch_size=16, dropout_dense=0.5)
    defaults = tune.tunable_defaults(params.load("train"), space)
    assert "batch_size" not in defaults and defaults["dropout_dense"] == 0.5


# ---------------------------------------------------------------- studies on real storage


def test_two_workers_share_one_sqlite_study(tune_project: Path, capsys: pytest.CaptureFixture) -> None:
    # two trials per process: neither worker can take all four, however much sooner it starts
    set_params("tune", trials_per_process=2)
    assert tune.main(["--workers", "2", "--trials", "4"]) == 0
    study = only_study()
    assert notices_printed(capsys.readouterr().out) == expected_notices(study)  # the plots are really drawn
    assert finished(study) == 4
    assert states(study)["RUNNING"] == 0 and states(study)["WAITING"] == 0
    per_worker = Counter(t.user_attrs["worker"] for t in study.get_trials(deepcopy=False, states=tune.FINISHED))
    assert sorted(per_worker.values()) == [2, 2], "both worker processes of the one round should have run trials"
    for name in tune.PLOTS.values():
        assert (paths.TUNING_DIR / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = paths.TRIALS_CSV.read_text().strip().splitlines()
    assert len(rows) == 1 + len(study.trials)
    assert json.loads(paths.TUNE_JSON.read_text())["finished_trials"] == 4


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_concurrent_workers_never_claim_the_same_queued_trial(project: Path) -> None:
    # SQLite ignores Optuna's SELECT ... FOR UPDATE: without tune's BEGIN IMMEDIATE, two workers popped the same
    # enqueued trial and the second one's result failed with "Cannot tell a COMPLETE trial" (CI, optuna#4002)
    cfg, url, workers, asks = params.load("tune"), paths.tune_storage(None), 4, 12
    queue = optuna.create_study(study_name="race", storage=tune.storage_for(url, cfg))
    for value in range(workers * asks):
        queue.enqueue_trial({"x": float(value)})
    start, claimed = threading.Barrier(workers), []

    def claim() -> None:
        study = optuna.load_study(study_name="race", storage=tune.storage_for(url, cfg))  # own engine: a process
        start.wait()
        claimed.extend(study.ask().number for _ in range(asks))

    threads = [threading.Thread(target=claim) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == workers * asks
    assert sorted(claimed) == list(range(workers * asks)), "a queued trial was claimed twice (or one was skipped)"


def test_plots_not_drawable_yet_are_reported_as_notices(project: Path) -> None:
    space = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    study = optuna.create_study(direction="maximize")
    for lr in (1e-3, 3e-3):  # the same score twice: no variance for the importances to explain
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": lr}, distributions=space, value=0.5))
    notices = tune.write_plots(study, seed=0)
    assert list(notices) == ["importances"] and "variance" in notices["importances"]
    study.add_trial(optuna.trial.create_trial(params={"learning_rate": 5e-3}, distributions=space, value=0.7))
    assert tune.write_plots(study, seed=0) == {}


def expected_notices(study: optuna.Study) -> set[str]:
    """Return the plots of `study` that may only be a notice: the importances when every trial scored the same."""
    values = {t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    return {"importances"} if len(values) < 2 else set()


def notices_printed(out: str) -> set[str]:
    """Return the plots tune's output says it wrote as a notice."""
    return {kind for kind in tune.PLOTS if f"tune: the {kind} plot is a notice" in out}


def test_fresh_worker_processes_take_over_after_trials_per_process(tune_project: Path) -> None:
    set_params("tune", trials=3, trials_per_process=1)  # one trial per process bounds a process's memory
    assert tune.main([]) == 0
    study = only_study()
    assert finished(study) == 3
    assert states(study)["RUNNING"] == 0 and states(study)["WAITING"] == 0
    workers = workers_of(study)
    assert len(workers) == 3, f"each trial should run in a fresh process, got {workers}"
    assert str(os.getpid()) not in {w.rsplit(":", 1)[-1] for w in workers}


def test_workers_follow_the_device_plan_onto_each_gpu(
    tune_project: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    set_params("tune", trials=2, trials_per_process=0, workers_cpu=2, workers_gpu=1)  # either way: worker processes
    cfg = params.load("tune")
    assert len(tune.tuning_workers(None, cfg)) == (len(detect().gpus) or 2)  # the device this machine has
    assert len(tune.tuning_workers(3, cfg)) == 3
    # Kaggle's two T4s (assumed: this parent plans for them, its workers run on this machine's CPU): one worker on
    # each GPU, which is what each worker process is started with
    t4 = Gpu("Tesla T4", (7, 5), 15.0)
    monkeypatch.setattr(tune, "detect", lambda: Hardware(keras.backend.backend(), (t4, t4)))
    assert [w.gpu for w in tune.tuning_workers(None, cfg)] == [0, 1]
    assert tune.main([]) == 0
    out = capfd.readouterr().out
    assert "(CUDA_VISIBLE_DEVICES=0)" in out and "(CUDA_VISIBLE_DEVICES=1)" in out, out
    study = only_study()
    assert finished(study) == 2
    workers = workers_of(study)
    assert workers and str(os.getpid()) not in {w.rsplit(":", 1)[-1] for w in workers}, workers
    with pytest.raises(ValueError, match="greater than or equal to 1"):  # the schema refuses no worker
        replace(cfg, workers_gpu=0)


def test_rerun_continues_the_study_and_best_params_change_training(tune_project: Path) -> None:
    set_params("train", dropout_dense=0.9)  # outside tune.space, so any tuned value differs from it
    assert tune.main([]) == 0  # tops the new study up to tune.trials = 2
    assert tune.main([]) == 0  # already there: no trial added
    assert finished(only_study()) == 2
    assert tune.main(["--trials", "1"]) == 0  # one more finished trial, in the same study
    study = only_study()
    assert finished(study) == 3
    best = json.loads(paths.BEST_PARAMS.read_text())
    assert best["study"] == study.study_name and best["params"] == study.best_params
    assert best["scored_fold"] == params.load("tune").fold  # the report leaves these rows out of one OOF row
    train_cfg, model = params.load("train"), params.load("model")
    untuned, tuned = (member_settings(train_cfg, model, model.name, t) for t in (None, read_tuned()))
    assert untuned.dropout_dense == 0.9
    assert tuned.dropout_dense == best["params"]["dropout_dense"] != untuned.dropout_dense
    assert tuned.learning_rate == best["params"]["learning_rate"]


# tune in a child whose first trial stops for good once running and says so: the test kills it there (polling
# the study for a running trial raced the trial's end on tiny data). Optuna's heartbeat thread is kept from
# recording, as when the kill lands before its first record (a race seen once in 11 runs): the trial must still be
# found dead, not left RUNNING forever.
TUNE_STOPS = """
import sys, threading
import optuna.storages._heartbeat
from pipeline import tune
optuna.storages._heartbeat.HeartbeatThread.start = lambda self: None
optuna.storages._heartbeat.HeartbeatThread.join = lambda self: None
def fit_stops(*args, **kwargs):
    print("STOPPED: a trial is running", flush=True)
    threading.Event().wait()
tune.fit = fit_stops
sys.exit(tune.main(["--trials", "2"]))
"""


def test_killed_worker_leaves_no_running_trial_after_a_rerun(tune_project: Path) -> None:
    set_params("tune", grace_seconds=3)  # the rerun waits this long for the dead worker's trial to go stale
    cmd = [sys.executable, "-c", TUNE_STOPS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("STOPPED:"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    running = only_study().get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    assert len(running) == 1
    killed = running[0].number
    rerun = subprocess.run(  # same target (tune.trials = 2): fails the stale trial, retries it, finishes
        [sys.executable, "-m", "pipeline.tune"], capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    study = only_study()
    counts = states(study)
    assert counts["RUNNING"] == 0 and counts["WAITING"] == 0
    assert finished(study) == 2 and counts["FAIL"] == 1
    assert study.trials[killed].state == optuna.trial.TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].state in tune.FINISHED


OPEN_WHEN_TOLD = """
import sys, time
from pathlib import Path
from pipeline import params, tune
cfg = params.load("tune")
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
tune.storage_for(sys.argv[3], cfg)
"""


def test_processes_opening_one_fresh_database_together_all_succeed(project: Path) -> None:
    for rep in range(2):
        open_together(f"sqlite:///data/processed/fresh{rep}.db", project / f"round{rep}")


def open_together(url: str, folder: Path, n: int = 4) -> None:
    """Have `n` processes call tune.storage_for on `url` at the same moment; check all succeed and the schema works."""
    folder.mkdir()
    env = {**os.environ, "KERAS_BACKEND": "numpy"}  # no TensorFlow import: only the storage is exercised
    ready, go = [folder / f"ready{i}" for i in range(n)], folder / "go"
    cmd = [sys.executable, "-c", OPEN_WHEN_TOLD]
    procs = [subprocess.Popen([*cmd, str(r), str(go), url], env=env, stderr=subprocess.PIPE) for r in ready]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all of them now create Optuna's tables at once
    errors = [proc.communicate(timeout=120)[1].decode()[-600:] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * n, errors
    storage = optuna.storages.RDBStorage(url)
    assert optuna.get_all_study_names(storage) == []
    optuna.create_study(storage=storage, study_name="after")  # the schema is whole and usable


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trial_orphaned_before_its_first_heartbeat_is_failed_and_requeued(project: Path) -> None:
    set_params("tune", heartbeat_seconds=1, grace_seconds=60)
    cfg = params.load("tune")
    study = tune.open_study("orphans", tune.storage_for(SQLITE, cfg), cfg, seed=0, worker=0)
    orphan = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    started = study.trials[orphan.number].datetime_start
    tune.fail_stale(study, cfg)
    assert states(study) == {"RUNNING": 1}, "a trial younger than the grace period is left alone"
    tune.fail_orphans(study, cfg, now=started + timedelta(seconds=cfg.grace_seconds - 1))
    assert states(study) == {"RUNNING": 1}, "a second before the grace period ends it is still left alone"
    later = started + timedelta(seconds=cfg.grace_seconds + 1)  # the clock the check reads, moved on
    tune.fail_orphans(study, cfg, now=later)
    tune.fail_orphans(study, cfg, now=later)  # idempotent: failed and re-queued once
    assert states(study) == {"FAIL": 1, "WAITING": 1}
    retry = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[0]
    assert retry.system_attrs["failed_trial"] == orphan.number and retry.params == orphan.params


# ---------------------------------------------------------------- PostgreSQL


def pg_binary(name: str) -> str | None:
    """Return the path of PostgreSQL server program `name` (PATH, then Debian's versioned folders)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(candidates[-1]) if candidates else None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (password auth); yields its URL and removes it afterwards."""
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found: install them with .ci/postgres.sh")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver psycopg2 is not installed")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="tune-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    (root / "pw").write_text(PG_PASSWORD + "\n")
    if as_user:
        shutil.chown(root / "pw", "postgres", "postgres")
    data, port = str(root / "data"), free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
    try:
        run_as(as_user, initdb, "-D", data, "-U", "tuner", f"--pwfile={root / 'pw'}", "--auth=scram-sha-256", "-N")
        run_as(as_user, pg_ctl, "-D", data, "-l", str(root / "log"), "-w", "-o", options, "start")
        yield f"postgresql+psycopg2://tuner:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        run_as(as_user, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def run_as(as_user: list[str], *command: str, check: bool = True) -> None:
    """Run `command` (prefixed by `as_user`) quietly; raise with its output when it fails and `check` is set."""
    done = subprocess.run([*as_user, *command], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:1])} failed ({done.returncode}): {done.stdout}{done.stderr}")


def test_processes_opening_one_fresh_postgresql_database_together_all_succeed(
    tune_project: Path, postgres_url: str
) -> None:
    open_together(postgres_url, tune_project / "round")


def test_two_workers_share_one_postgresql_study(tune_project: Path, postgres_url: str, capfd) -> None:
    set_params("tune", trials_per_process=2)  # neither worker can take all three trials
    assert tune.main(["--storage", postgres_url, "--workers", "2", "--trials", "3"]) == 0
    out, err = capfd.readouterr()
    assert "tuner:***@127.0.0.1" in out
    assert PG_PASSWORD not in out + err
    study = only_study(postgres_url)
    assert finished(study) == 3
    assert states(study)["RUNNING"] == 0 and states(study)["WAITING"] == 0
    assert len(workers_of(study)) == 2, "both worker processes should have run trials"
    assert not paths.OPTUNA_DB.exists()


def test_every_trial_of_a_worker_computes_in_device_precision(tune_project: Path, monkeypatch) -> None:
    # keras.backend.clear_session between trials resets Keras' global policy to float32: the second trial of a
    # worker process silently trained in float32 under device.precision mixed_bfloat16
    set_params("device", precision="mixed_bfloat16")
    cfg = params.load("tune")
    objective = tune.load_objective(cfg, tune.resolve_space(cfg, params.load("model").name), 0, 2)
    seen, fit = [], tune.fit

    def fit_noting_the_policy(*args, **kwargs):
        seen.append(keras.config.dtype_policy().name)
        return fit(*args, **kwargs)

    monkeypatch.setattr(tune, "fit", fit_noting_the_policy)
    try:
        storage = tune.storage_for(f"sqlite:///{tune_project / 'trials.db'}", cfg)
        optuna.create_study(storage=storage, direction="maximize").optimize(objective, n_trials=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert seen == ["mixed_bfloat16", "mixed_bfloat16"]
