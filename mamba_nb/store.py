"""Where a dataset lives: a local directory, or a prefix in object storage (s3://, gs://, az://).

`Store(uri, storage_options)` is one dataset's root. It hands Lance the URI and the options of
each table (`lance_uri`, `options`), and reads and writes the other objects (the manifest, the
tokenizer's files) through pyarrow's filesystem for the same URI and options.

Storage options are Lance's names (`aws_access_key_id`, `aws_secret_access_key`,
`aws_session_token`, `aws_region`, `aws_endpoint`, `allow_http`, `client_max_retries`, ...,
https://lancedb.github.io/lance/object_store.html). `resolve_options()` gathers them from the
environment (`AWS_*`) and then from `--storage-options key=value ...` or a YAML file of them;
a value given there wins. Secrets are best kept in the environment: `redact` hides them in
anything a run writes down.

Object stores have no rename, so a remote build cannot appear all at once the way a local one
does (dataset.py builds locally in a hidden sibling and renames it). A remote build writes in
place and writes the manifest object last: one PUT, so it exists whole or not at all, and no
manifest means no dataset.

Not here: what a dataset holds (`dataset.py`), the local copy of its fragments (`mirror.py`).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
# Environment variable -> Lance storage option. Lance reads these itself too; gathering them here
# gives pyarrow (the manifest, the tokenizer) the very same credentials and endpoint.
ENV_OPTIONS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_DEFAULT_REGION": "aws_region",
    "AWS_REGION": "aws_region",
    "AWS_ENDPOINT": "aws_endpoint",
    "AWS_ENDPOINT_URL": "aws_endpoint",
    "AWS_ALLOW_HTTP": "allow_http",
}
SECRET = re.compile(r"secret|token|password|sas|account_key|service_account", re.IGNORECASE)
OPTIONS_HINT = "e.g. --storage-options aws_endpoint=http://127.0.0.1:9000 aws_region=us-east-1, or a YAML file of them"


class StoreError(RuntimeError):
    """Object storage that cannot be reached or read as asked; the message says what to check."""


def is_remote(uri: str | os.PathLike) -> bool:
    """Is `uri` an object-store URI (s3://...)? A path or file:// is local; another scheme is an error."""
    text = str(uri)
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if match is None or match.group(1).lower() == "file":
        return False
    if match.group(1).lower() not in REMOTE_SCHEMES:
        raise StoreError(f"{text!r}: unsupported scheme {match.group(1)!r}; use a local path or one of "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    return True


def _parse_items(items: Iterable[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in items:
        if item.endswith((".yaml", ".yml")) and "=" not in item:
            options.update(_from_yaml(Path(item)))
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"storage option {item!r} is not key=value; {OPTIONS_HINT}")
        options[key.strip()] = value
    return options


def _from_yaml(path: Path) -> dict[str, str]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"storage options file {str(path)!r} does not exist; {OPTIONS_HINT}")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"storage options file {str(path)!r} holds a {type(loaded).__name__}, not key: value lines")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in loaded.items()}


def resolve_options(items: Optional[Iterable[str] | dict] = None, environ: Optional[dict] = None) -> dict[str, str]:
    """Lance storage options: those the environment sets, then `items` (key=value strings, YAML
    file paths, or a dict), which win."""
    environ = os.environ if environ is None else environ
    options = {opt: environ[var] for var, opt in ENV_OPTIONS.items() if environ.get(var)}
    if isinstance(items, dict):
        options.update({str(k): str(v) for k, v in items.items()})
    elif items:
        options.update(_parse_items(items))
    return options


def redact(items: Optional[Iterable[str]]) -> Optional[list[str]]:
    """`--storage-options` items with secret values hidden, for what a run writes down."""
    if items is None:
        return None
    return [f"{k}=***" if (k := i.partition("=")[0]) and "=" in i and SECRET.search(k) else i for i in items]


def _option(options: dict[str, str], *names: str) -> Optional[str]:
    return next((options[n] for n in names if options.get(n)), None)


def _s3_filesystem(options: dict[str, str]):
    from pyarrow import fs

    kw: dict[str, Any] = {}
    for arg, names in (("access_key", ("aws_access_key_id", "access_key_id")),
                       ("secret_key", ("aws_secret_access_key", "secret_access_key")),
                       ("session_token", ("aws_session_token", "session_token")),
                       ("region", ("aws_region", "region"))):
        if (value := _option(options, *names)) is not None:
            kw[arg] = value
    endpoint = _option(options, "aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url")
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        kw["endpoint_override"], kw["scheme"] = (host, scheme) if sep else (endpoint, "https")
    elif _option(options, "allow_http") in ("true", "1"):
        kw["scheme"] = "http"
    retries = _option(options, "client_max_retries")
    kw["retry_strategy"] = fs.AwsStandardS3RetryStrategy(max_attempts=int(retries) + 1 if retries else 3)
    kw["connect_timeout"] = kw["request_timeout"] = 10
    return fs.S3FileSystem(**kw)


class Store:
    """One dataset's root, local or remote: child URIs, and whole-object reads and writes."""

    def __init__(self, uri: str | os.PathLike, options: Optional[dict[str, str]] = None):
        text = str(uri)
        self.remote = is_remote(text)
        if self.remote:
            self.uri = text.rstrip("/")
            self.options = dict(options or {})
        else:
            self.uri = str(Path(text.removeprefix("file://")).expanduser().absolute())
            self.options = {}
        self._fs = None

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    @property
    def path(self) -> Path | str:
        """What messages show: a `Path` for a local dataset, the URI for a remote one."""
        return self.uri if self.remote else Path(self.uri)

    def lance_uri(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def lance_options(self) -> Optional[dict[str, str]]:
        return self.options or None

    # --- pyarrow's view of the same place ---------------------------------------------

    def _filesystem(self):
        """(pyarrow filesystem, this root's path in it)."""
        if self._fs is None:
            from pyarrow import fs

            if not self.remote:
                self._fs = (fs.LocalFileSystem(), self.uri)
            elif self.uri.split("://")[0].lower() in ("s3", "s3a"):
                self._fs = (_s3_filesystem(self.options), self.uri.split("://", 1)[1])
            else:  # gs://, az://: pyarrow's own resolution (credentials from the environment)
                self._fs = fs.FileSystem.from_uri(self.uri)
        return self._fs

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except OSError as err:
            raise StoreError(self._explain(what, err)) from err

    def _explain(self, what: str, err: BaseException) -> str:
        text = str(err)
        hint = "check the URI, the credentials and the endpoint (storage options)"
        if re.search(r"access.?denied|forbidden|invalidaccesskey|signature|403", text, re.IGNORECASE):
            hint = "the credentials were refused: check aws_access_key_id / aws_secret_access_key (or AWS_* in the environment)"
        elif re.search(r"nosuchbucket|bucket.*(not exist|not found)", text, re.IGNORECASE):
            hint = f"the bucket of {self.uri!r} does not exist: create it, or fix the URI"
        elif re.search(r"connect|resolve|timed? ?out|curl", text, re.IGNORECASE):
            hint = "the object store did not answer: check aws_endpoint and the network (the read was retried)"
        return f"{what} {self.uri!r} failed ({text.strip().splitlines()[0] if text.strip() else type(err).__name__}); {hint}"

    def _path(self, name: str) -> str:
        fs, root = self._filesystem()
        return f"{root}/{name}" if name else root

    def info(self, name: str = ""):
        """pyarrow FileInfo of a child (`type` NotFound when there is none)."""
        fs, _ = self._filesystem()
        return self._call("reading", fs.get_file_info, self._path(name))

    def is_file(self, name: str) -> bool:
        from pyarrow import fs

        return self.info(name).type == fs.FileType.File

    def is_dir(self, name: str = "") -> bool:
        """A directory (remote: a prefix with objects under it)."""
        from pyarrow import fs

        if not self.remote:
            return self.info(name).type == fs.FileType.Directory
        return bool(self.listing(name, limit=1))

    def exists(self, name: str = "") -> bool:
        return self.is_file(name) or self.is_dir(name)

    def listing(self, name: str = "", limit: Optional[int] = None) -> dict[str, int]:
        """{path relative to `name`: bytes} of every file under `name` (empty when there is none)."""
        from pyarrow import fs

        filesystem, _ = self._filesystem()
        base = self._path(name)
        selector = fs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self._call("listing", filesystem.get_file_info, selector)
        out = {}
        for info in infos:
            if info.type == fs.FileType.File:
                out[info.path[len(base):].lstrip("/")] = info.size
                if limit is not None and len(out) >= limit:
                    break
        return out

    def entries(self) -> set[str]:
        """The names directly under the root."""
        return {rel.split("/", 1)[0] for rel in self.listing()}

    def read_text(self, name: str) -> str:
        filesystem, _ = self._filesystem()

        def read() -> str:
            with filesystem.open_input_stream(self._path(name)) as f:
                return f.read().decode("utf-8")

        return self._call("reading", read)

    def write_text(self, name: str, text: str) -> None:
        """Write a whole object at once: locally a temporary file renamed into place, remotely one
        PUT (an object store shows an object whole or not at all)."""
        if not self.remote:
            path = Path(self._path(name))
            part = path.with_name(path.name + ".part")
            part.write_text(text)
            os.replace(part, path)
            return
        filesystem, _ = self._filesystem()

        def write() -> None:
            with filesystem.open_output_stream(self._path(name)) as f:
                f.write(text.encode("utf-8"))

        self._call("writing", write)

    def delete(self, name: str = "") -> None:
        """Remove a child (file or directory), or everything under the root when `name` is empty."""
        from pyarrow import fs

        filesystem, _ = self._filesystem()
        if not self.remote:
            path = Path(self._path(name))
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        elif self.info(name).type == fs.FileType.File:
            self._call("deleting", filesystem.delete_file, self._path(name))
        elif self.is_dir(name):
            self._call("deleting", lambda p: filesystem.delete_dir_contents(p, missing_dir_ok=True), self._path(name))

    def upload(self, local_dir: Path, name: str) -> None:
        """Copy a local directory's files under `name` (empty: the root)."""
        filesystem, _ = self._filesystem()
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                dest = self._path(f"{name}/{rel}" if name else rel)
                self._call("writing", _copy_to, filesystem, path, dest)

    def fetch(self, name: str, dest: Path) -> None:
        """Copy the object `name` to the local file `dest`, renamed into place whole."""
        filesystem, _ = self._filesystem()
        self._call(f"copying {name} of", _fetch_file, filesystem, self._path(name), dest)

    def download(self, name: str, local_dir: Path) -> Path:
        """Copy the files under `name` into `local_dir` (each renamed into place whole)."""
        for rel in self.listing(name):
            dest = Path(local_dir) / rel
            if not dest.is_file():
                self.fetch(f"{name}/{rel}", dest)
        return Path(local_dir)


def _copy_to(filesystem, path: Path, dest: str) -> None:
    with open(path, "rb") as src, filesystem.open_output_stream(dest) as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _fetch_file(filesystem, source: str, dest: Path) -> None:
    """Download one object to `dest` through a temporary file: readers never see half of it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, filesystem.open_input_stream(source) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
