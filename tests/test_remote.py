"""Datasets in object storage, against a real S3 API: moto's server on 127.0.0.1, started here.

Build → open → windows → train → resume → evaluate on an s3:// dataset; its tokens equal the
local build's; an interrupted remote build never opens; wrong credentials, a missing bucket and
a server gone mid-read each give one clear error; secrets never reach what a run writes down.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_tokens

pytest.importorskip("moto.server")

from mamba_nb.config import EvalConfig, TrainConfig  # noqa: E402
from mamba_nb.dataset import DatasetError, build_dataset, open_dataset  # noqa: E402
from mamba_nb.store import Store, StoreError, redact, resolve_options  # noqa: E402

# Lance retries a failed request for up to 3 minutes by default; a test wants its answer now.
QUICK = ["client_max_retries=1", "client_retry_timeout=3"]


def start_s3(bucket: str):
    """A moto S3 server on 127.0.0.1 that checks signatures: (server, options with a user's key).

    Its setup requests (make a user, its key and policy, the bucket) go unchecked; then
    `reset-auth 0` makes it check every request, so wrong credentials are refused as S3 would."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # (moto keeps this switch per process, for every server in it: open it again for the setup)
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"1000000").raise_for_status()
    admin = dict(endpoint_url=endpoint, aws_access_key_id="admin", aws_secret_access_key="admin", region_name="us-east-1")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName=f"course-{bucket}")
    iam.put_user_policy(UserName=f"course-{bucket}", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=f"course-{bucket}")["AccessKey"]
    boto3.client("s3", **admin).create_bucket(Bucket=bucket)
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0").raise_for_status()
    options = [f"aws_endpoint={endpoint}", "allow_http=true", "aws_region=us-east-1",
               f"aws_access_key_id={key['AccessKeyId']}", f"aws_secret_access_key={key['SecretAccessKey']}", *QUICK]
    return server, options


def secret_of(options: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in options if o.startswith("aws_secret_access_key="))


@pytest.fixture(scope="module")
def s3():
    """(server, options): a moto S3 server with bucket `mnb` for this module."""
    server, options = start_s3("mnb")
    yield server, options
    server.stop()


@pytest.fixture(scope="module")
def remote_tiny(s3, tiny_data_config):
    """The tiny corpus built straight into s3://mnb/tiny."""
    _, options = s3
    cfg = dataclasses.replace(tiny_data_config, out_dir="s3://mnb/tiny", storage_options=options)
    return build_dataset(cfg, progress=False)


def test_a_remote_build_holds_the_same_tokens_and_documents_as_the_local_one(remote_tiny, tiny_dataset, tmp_path):
    assert remote_tiny.path == "s3://mnb/tiny"
    assert_same_tokens(remote_tiny, tiny_dataset)
    assert remote_tiny.tokenizer.get_vocab() == tiny_dataset.tokenizer.get_vocab()
    assert remote_tiny.meta["settings"]["storage_options"] == redact(remote_tiny.meta["settings"]["storage_options"])
    assert secret_of(remote_tiny.meta["settings"]["storage_options"]) == "***"


def test_reads_through_the_cache_and_straight_from_the_store_agree(s3, remote_tiny, tmp_path):
    _, options = s3
    cached = open_dataset("s3://mnb/tiny", options, str(tmp_path / "cache"))
    direct = open_dataset("s3://mnb/tiny", options, "none")
    rows = np.sort(np.random.default_rng(0).choice(cached.num_tokens("train"), 300, replace=False))
    assert np.array_equal(cached.take("train", rows), direct.take("train", rows))
    # only the data files holding those rows were fetched, each whole (the build recorded its size)
    fetched = {p.name: p.stat().st_size for p in (tmp_path / "cache").rglob("train.lance/data/*.lance")}
    recorded = {k.rsplit("/", 1)[1]: v for k, v in cached.meta["files"].items() if k.startswith("train.lance/data/")}
    assert fetched and all(recorded[name] == size for name, size in fetched.items())


def test_a_dataset_pickles_with_its_options_for_dataloader_workers(s3, remote_tiny, tmp_path):
    import pickle

    _, options = s3
    ds = open_dataset("s3://mnb/tiny", options, str(tmp_path / "cache"))
    again = pickle.loads(pickle.dumps(ds))
    assert again.store.options == ds.store.options and again.dataset_cache == ds.dataset_cache
    assert np.array_equal(again.read("validation", 3, 40), ds.read("validation", 3, 40))


def test_train_resume_and_evaluate_on_a_remote_dataset(s3, remote_tiny, tmp_path):
    from mamba_nb.evaluate import evaluate
    from mamba_nb.train import train

    _, options = s3
    cfg = TrainConfig(dataset="s3://mnb/tiny", storage_options=options, dataset_cache=str(tmp_path / "cache"),
                      out_dir=str(tmp_path / "run"), preset="micro", context_len=32, batch_size=4, max_steps=4,
                      time_budget_s=None, warmup_steps=1, eval_every=2, eval_windows=4, gain_holes=2, save_every=2,
                      num_workers=1, seed=0)
    train(dataclasses.replace(cfg, max_steps=2))
    latest = train(cfg)  # resumes at step 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    secret = secret_of(options)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".jsonl")]
    assert written and not any(secret in p.read_text(errors="ignore") for p in written)
    assert secret.encode() not in (tmp_path / "run" / "latest" / "training_state.pt").read_bytes()
    report = evaluate(latest, "s3://mnb/tiny", EvalConfig(storage_options=options, dataset_cache=str(tmp_path / "c2"),
                                                          num_line_tasks=2, num_loss_windows=2, humaneval=False,
                                                          num_gain_tasks=2, max_line_tokens=16), progress=False)
    assert report["dataset"] == "s3://mnb/tiny" and np.isfinite(report["loss"]["val_loss"])


def test_an_interrupted_remote_build_never_opens_and_the_next_build_replaces_it(s3, tiny_data_config):
    from mamba_nb.corpus import FileCorpus

    _, options = s3

    class Breaks(FileCorpus):
        def _documents(self):
            for i, doc in enumerate(super()._documents()):
                if i == 20 and self.passes == 2:  # during the token pass, after the tokenizer was uploaded
                    raise KeyboardInterrupt
                yield doc

        def __iter__(self):
            self.passes = getattr(self, "passes", 0) + 1
            return super().__iter__()

    cfg = dataclasses.replace(tiny_data_config, out_dir="s3://mnb/broken", storage_options=options)
    corpus = Breaks.glob(tiny_data_config.path, tiny_data_config.patterns)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(cfg, corpus=corpus, progress=False)
    store = Store("s3://mnb/broken", resolve_options(options))
    assert not store.is_file("manifest.json")
    with pytest.raises(DatasetError, match="not a complete dataset|no dataset"):
        open_dataset("s3://mnb/broken", options)
    # leftovers of a killed build (no manifest, our layout) are replaced, no --overwrite needed
    store.write_text("train.lance/data/leftover.lance", "x")
    store.write_text("tokenizer/tokenizer.json", "{}")
    store.write_text("validation.lance/data/leftover.lance", "x")
    ds = build_dataset(cfg, progress=False)
    assert ds.num_tokens("train") > 0 and "train.lance/data/leftover.lance" not in ds.meta["files"]
    assert not store.is_file("train.lance/data/leftover.lance")


def test_wrong_credentials_are_one_clear_error(s3, remote_tiny):
    _, options = s3
    wrong = [o for o in options if not o.startswith("aws_secret")] + ["aws_secret_access_key=wrong-secret"]
    with pytest.raises(DatasetError, match="credentials") as err:
        open_dataset("s3://mnb/tiny", wrong)
    assert "wrong-secret" not in str(err.value)


def test_a_missing_bucket_is_one_clear_error(s3, tiny_data_config):
    _, options = s3
    with pytest.raises(DatasetError, match="no dataset at 's3://no-such-bucket/x'|bucket"):
        open_dataset("s3://no-such-bucket/x", options)
    cfg = dataclasses.replace(tiny_data_config, out_dir="s3://no-such-bucket/x", storage_options=options)
    with pytest.raises((DatasetError, StoreError), match="bucket|no-such-bucket"):
        build_dataset(cfg, progress=False)


def test_a_server_gone_mid_read_is_one_clear_error(tiny_data_config, tmp_path):
    """Its own server, stopped while a dataset is open: a direct read fails with the store named."""
    server, options = start_s3("gone")
    build_dataset(dataclasses.replace(tiny_data_config, out_dir="s3://gone/ds", storage_options=options), progress=False)
    ds = open_dataset("s3://gone/ds", options, "none")
    assert len(ds.take("train", np.arange(10))) == 10
    server.stop()
    with pytest.raises(DatasetError, match="s3://gone/ds.*reachable"):
        ds.take("train", np.arange(5000, 5100))


@pytest.mark.parametrize("items, expected", [
    (["aws_region=eu-west-1"], {"aws_region": "eu-west-1"}),
    (["aws_endpoint=http://h:9000", "allow_http=true"], {"aws_endpoint": "http://h:9000", "allow_http": "true"}),
    (["a=b=c"], {"a": "b=c"}),
])
def test_storage_options_come_from_items_over_the_environment(items, expected):
    env = {"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "k"}
    got = resolve_options(items, environ=env)
    assert got == {"aws_region": "us-east-1", "aws_access_key_id": "k", **expected}


def test_storage_options_from_a_yaml_file(tmp_path):
    path = tmp_path / "s3.yaml"
    path.write_text("aws_endpoint: http://127.0.0.1:9000\nallow_http: true\n")
    assert resolve_options([str(path)], environ={}) == {"aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true"}


def test_a_storage_option_that_is_not_key_value_is_refused():
    with pytest.raises(ValueError, match="'endpoint' is not key=value"):
        resolve_options(["endpoint"], environ={})


def test_secrets_are_redacted_and_the_rest_kept():
    assert redact(["aws_secret_access_key=s", "aws_session_token=t", "aws_region=r", "aws_access_key_id=k"]) == [
        "aws_secret_access_key=***", "aws_session_token=***", "aws_region=r", "aws_access_key_id=k"]


def test_an_unknown_scheme_is_refused():
    with pytest.raises(DatasetError, match="unsupported scheme 'ftp'"):
        open_dataset("ftp://host/ds")
    assert Path(Store("file:///tmp/x").path) == Path("/tmp/x")
