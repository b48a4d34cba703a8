"""``rsna-aneurysm push`` through the real kaggle CLI against a stand-in Kaggle API on loopback port 80."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import kaggle_standin as standin
import pytest
import weights_helper

from rsna_aneurysm.cli import main
from rsna_aneurysm.kaggle.package import KaggleConfig, package
from rsna_aneurysm.kaggle.push import output_error

OWNER = "testowner"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One packaged submission (weights, kit wheel, a local extra wheel, kernel) for the whole module."""
    root = tmp_path_factory.mktemp("push")
    run = weights_helper.make_weights(root / "run", folds=(0, 1))
    wheel_dir = root / "wheels"
    standin.make_wheel(wheel_dir)
    package(run, KaggleConfig(owner=OWNER), root / "staging", download=False, wheel_dirs=[wheel_dir])
    return root / "staging"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The stand-in API on 127.0.0.1:80 and a kaggle CLI environment with dummy credentials from tmp_path."""
    config_dir = tmp_path / "kaggle_config"
    config_dir.mkdir()
    (config_dir / "kaggle.json").write_text(json.dumps({"username": OWNER, "key": "dummy-key-for-tests"}))
    os.chmod(config_dir / "kaggle.json", 0o600)
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle/access_token of the machine's user
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    try:
        s = standin.KaggleStandIn(port=80).start()
    except PermissionError:
        pytest.skip("binding port 80 needs root (the kaggle CLI's LOCALHOST environment uses port 80)")
    yield s
    s.stop()


def _copy(staged: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "staging"
    shutil.copytree(staged, dest)
    return dest


def test_push_creates_the_datasets_and_pushes_the_kernel(staged: Path, tmp_path: Path, server) -> None:
    staging = _copy(staged, tmp_path)
    assert main(["push", "--dir", str(staging), "--wait-s", "0"]) == 0

    refs = {f"{OWNER}/rsna-aneurysm-weights", f"{OWNER}/rsna-aneurysm-code", f"{OWNER}/rsna-aneurysm-wheels"}
    assert set(server.datasets) == refs
    assert all(r["auth"] and r["auth"].startswith("Basic ") for r in server.requests if r["method"] == "POST")
    for ref, body in server.datasets.items():
        folder = staging / "datasets" / ref.split("/")[1]
        meta = json.loads((folder / "dataset-metadata.json").read_text())
        assert body["title"] == meta["title"] and body["licenseName"] == meta["licenses"][0]["name"]
        assert body["isPrivate"] is True
        # Every file of the folder arrived, byte for byte, and none of them twice.
        tokens = [f["token"] for f in body["files"]]
        received = {server.blob_names[t]: server.uploads[t] for t in tokens}
        local = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "dataset-metadata.json"}
        assert received == local
    assert "fold_0.pt" in {server.blob_names[f["token"]] for f in server.datasets[f"{OWNER}/rsna-aneurysm-weights"]
                           ["files"]}

    kernel = server.kernels[f"{OWNER}/rsna-aneurysm-submit"]
    assert kernel["text"] == (staging / "kernels" / "rsna-aneurysm-submit" / "submit.py").read_text()
    assert kernel["enableInternet"] is False and kernel["enableGpu"] is True
    assert kernel["language"] == "python" and kernel["kernelType"] == "script"
    assert set(kernel["datasetDataSources"]) == refs
    assert kernel["competitionDataSources"] == ["rsna-intracranial-aneurysm-detection"]

    # A second push versions the existing datasets instead of creating them.
    n_created = len(server.calls("CreateDataset"))
    assert main(["push", "--dir", str(staging), "--wait-s", "0", "--only", "datasets", "-m", "v2"]) == 0
    versions = server.calls("CreateDatasetVersion")
    assert len(versions) == 3 and len(server.calls("CreateDataset")) == n_created
    assert {v["body"]["body"]["versionNotes"] for v in versions} == {"v2"}


def _break(staging: Path, how: str) -> None:
    if how == "short slug":
        path = staging / "datasets" / "rsna-aneurysm-code" / "dataset-metadata.json"
        meta = json.loads(path.read_text())
        meta["id"] = f"{OWNER}/abc"
        path.write_text(json.dumps(meta))
    elif how == "missing code file":
        (staging / "kernels" / "rsna-aneurysm-submit" / "submit.py").unlink()
    elif how == "internet on":
        path = staging / "kernels" / "rsna-aneurysm-submit" / "kernel-metadata.json"
        meta = json.loads(path.read_text())
        meta["enable_internet"] = True
        path.write_text(json.dumps(meta))
    elif how == "kaggle.json in a dataset":
        token = {"username": OWNER, "key": "0123456789abcdef"}
        (staging / "datasets" / "rsna-aneurysm-weights" / "kaggle.json").write_text(json.dumps(token))
    elif how == "key in the kernel folder":
        (staging / "kernels" / "rsna-aneurysm-submit" / "id_rsa").write_text("secret")
    elif how == "placeholder left":
        path = staging / "datasets" / "rsna-aneurysm-wheels" / "dataset-metadata.json"
        path.write_text(path.read_text().replace(OWNER, "{{owner}}"))


@pytest.mark.parametrize("how,expect", [("short slug", "must be 6 to 50 characters"),
                                        ("missing code file", "does not exist"),
                                        ("internet on", "enable_internet must be false"),
                                        ("placeholder left", "unfilled placeholder"),
                                        ("kaggle.json in a dataset", "kaggle.json looks like a credentials file"),
                                        ("key in the kernel folder", "id_rsa looks like a credentials file")])
def test_bad_metadata_is_refused_before_any_upload(staged: Path, tmp_path: Path, server, how: str, expect: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    staging = _copy(staged, tmp_path)
    _break(staging, how)
    assert main(["push", "--dir", str(staging), "--wait-s", "0"]) == 1
    assert expect in capsys.readouterr().err
    assert server.requests == []  # nothing reached the server
    assert main(["push", "--dir", str(staging), "--dry-run"]) == 1  # the dry run makes the same checks


def test_server_side_error_with_exit_code_zero_fails_the_push(staged: Path, tmp_path: Path, server,
                                                              capsys: pytest.CaptureFixture) -> None:
    staging = _copy(staged, tmp_path)
    server.kernel_error = "Notebook not found"
    assert main(["push", "--dir", str(staging), "--wait-s", "0", "--only", "kernel"]) == 1
    err = capsys.readouterr().err
    assert "Kernel push error: Notebook not found" in err and "push kernel" in err
    assert len(server.calls("SaveKernel")) == 1 and not server.calls("CreateDataset")


def test_dry_run_checks_and_uploads_nothing(staged: Path, tmp_path: Path, server,
                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["push", "--dir", str(staged), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kaggle kernels push -p" in out and out.count("kaggle datasets create -q") == 3
    assert server.requests == []


def test_output_reading() -> None:
    assert output_error(0, "Kernel version 3 successfully pushed.  Please check progress at x", "successfully") is None
    assert "not valid" in output_error(0, "The following are not valid dataset sources and could not be added to "
                                          "the kernel: ['a/b']\nKernel version 1 successfully pushed.", "successfully")
    assert "already in use" in output_error(0, "Dataset creation error: The requested slug \"x\" is already in use",
                                            "is being created")
    assert output_error(0, "something unexpected", "is being created").startswith("no 'is being created'")
    assert output_error(1, "403 Client Error: Forbidden", "x").startswith("exit code 1")


@pytest.mark.parametrize("name,content", [("kaggle.json", "{}"), ("settings.json", '{"username": "u", "key": "k"}'),
                                          (".env", "KAGGLE_KEY=1")])
def test_dry_run_refuses_credentials_in_the_staging_folder(staged: Path, tmp_path: Path, name: str, content: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    staging = _copy(staged, tmp_path)
    (staging / "datasets" / "rsna-aneurysm-code" / name).write_text(content)
    assert main(["push", "--dir", str(staging), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert f"{name} looks like a credentials file" in err
