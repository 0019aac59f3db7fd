"""Tests for ibert_ref.loading: local folders, a fake offline HF cache, and every error path.

Nothing touches the network: Hub tests lay out a Hugging Face cache by hand, exactly as
huggingface_hub writes it (blobs/ + refs/<branch> + snapshots/<commit>/<file> symlinks), and a
socket guard records (and refuses) any connection attempt so "offline" is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp

from ibert_ref.loading import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_safetensors,
    resolve_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMIT_OLD = "1" * 40
COMMIT_NEW = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"

CONFIG = {
    "model_type": "ibert",
    "hidden_size": 4,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 8,
    "vocab_size": 10,
    "max_position_embeddings": 12,
    "quant_mode": True,
    "pad_token_id": 1,
}


def make_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """A handful of I-BERT-like tensors (task-model naming, with the ``ibert.`` prefix)."""
    rng = np.random.default_rng(seed)
    return {
        "ibert.embeddings.word_embeddings.weight": rng.standard_normal((10, 4)).astype(np.float32),
        "ibert.embeddings.LayerNorm.weight": np.ones(4, np.float32),
        "ibert.embeddings.LayerNorm.shift": np.zeros(1, np.float32),
        "ibert.embeddings.embeddings_act1.x_min": np.array([-1e-5], np.float32),
        "ibert.encoder.layer.0.attention.self.query.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "ibert.encoder.layer.0.attention.self.query.bias": rng.standard_normal(4).astype(np.float32),
        "classifier.dense.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "position_ids": np.arange(12, dtype=np.int64)[None],
    }


def write_folder(folder: Path, tensors=None, config=CONFIG, weights=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if weights:
        stnp.save_file(tensors if tensors is not None else make_tensors(), str(folder / "model.safetensors"),
                       metadata={"format": "pt"})
    return folder


def write_sharded(folder: Path, shards: dict[str, dict[str, np.ndarray]], weight_map=None) -> Path:
    """Write shards + index; ``weight_map`` defaults to the true key -> shard mapping."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    true_map = {}
    for name, tensors in shards.items():
        stnp.save_file(tensors, str(folder / name))
        true_map.update({k: name for k in tensors})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map if weight_map is not None else true_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def write_raw_safetensors(path: Path, entries: dict[str, tuple[str, tuple, bytes]]) -> None:
    """Write a safetensors file by hand (for dtypes numpy cannot represent, e.g. BF16)."""
    header, blobs, offset = {}, [], 0
    for key, (dtype, shape, data) in entries.items():
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def split_in_two(tensors: dict[str, np.ndarray]):
    keys = list(tensors)
    half = len(keys) // 2
    return (
        {k: tensors[k] for k in keys[:half]},
        {k: tensors[k] for k in keys[half:]},
    )


# --------------------------------------------------------------------------------------------
# Fake Hugging Face cache, laid out like huggingface_hub's file_download does it
# --------------------------------------------------------------------------------------------


def add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs=("main",)) -> Path:
    """Add snapshot ``commit`` of ``repo_id`` to ``cache``: content-addressed blobs, relative
    symlinks snapshots/<commit>/<file> -> ../../blobs/<hash>, and refs/<branch> = commit."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    (storage / "refs").mkdir(exist_ok=True)
    snap = storage / "snapshots" / commit
    for rel, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        blob = storage / "blobs" / digest
        blob.write_bytes(data)
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        rel_blob = os.path.relpath(blob, target.parent)
        try:
            os.symlink(rel_blob, target)
        except OSError:  # pragma: no cover - filesystems without symlinks: huggingface_hub copies
            shutil.copyfile(blob, target)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)  # no trailing newline, like huggingface_hub
    return snap


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Refuse and record every outgoing connection attempt."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    # huggingface_hub 2.x fetches an "agent harness" registry once per process when it builds
    # request headers (even with local_files_only=True) and caches it in memory and on disk.
    # Reset both caches so every test sees that first fetch, whatever ran before it.
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import _detect_agent

        monkeypatch.setattr(_detect_agent, "_registry", None)
        if hasattr(constants, "AGENT_HARNESSES_PATH"):
            monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "no-agent-registry.json"))
    except ImportError:  # other huggingface_hub versions: nothing to reset
        pass
    return attempts


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF hub cache; HF_HUB_CACHE points at it, offline env vars cleared."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in b:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].dtype == b[k].dtype


# --------------------------------------------------------------------------------------------
# Local folder
# --------------------------------------------------------------------------------------------


def test_load_folder(tmp_path):
    tensors = make_tensors()
    folder = write_folder(tmp_path / "ckpt", tensors)
    ckpt = load_checkpoint(folder)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.config == CONFIG
    assert ckpt.source == str(folder.resolve())
    assert ckpt.files == [str(folder / "config.json"), str(folder / "model.safetensors")]
    assert_same_tensors(ckpt.tensors, tensors)
    assert ckpt.tensors["position_ids"].dtype == np.int64  # non-float dtypes kept


def test_load_direct_file_path(tmp_path):
    tensors = make_tensors()
    folder = write_folder(tmp_path / "ckpt", tensors)
    ckpt = load_checkpoint(folder / "model.safetensors")
    assert ckpt.config == CONFIG
    assert_same_tensors(ckpt.tensors, tensors)


def test_tensor_lookup_prefix_and_shape(tmp_path):
    ckpt = load_checkpoint(write_folder(tmp_path / "c"))
    w = ckpt.tensor("embeddings.word_embeddings.weight", shape=(10, 4))
    assert w is ckpt.tensors["ibert.embeddings.word_embeddings.weight"]
    assert ckpt.tensor("ibert.embeddings.word_embeddings.weight", shape=(None, 4)) is w
    assert ckpt.tensor("classifier.dense.weight").shape == (4, 4)
    assert ckpt.has("encoder.layer.0.attention.self.query.bias")
    assert ckpt.has("ibert.encoder.layer.0.attention.self.query.bias")
    assert not ckpt.has("pooler.dense.weight")
    assert ckpt.find_key("embeddings.LayerNorm.shift") == "ibert.embeddings.LayerNorm.shift"

    with pytest.raises(CheckpointError, match=r"pooler\.dense\.weight"):
        ckpt.tensor("pooler.dense.weight")
    with pytest.raises(CheckpointError) as info:
        ckpt.tensor("embeddings.word_embeddings.weight", shape=(10, 5))
    msg = str(info.value)
    assert "ibert.embeddings.word_embeddings.weight" in msg and "(10, 4)" in msg and "(10, 5)" in msg
    with pytest.raises(CheckpointError, match="expected"):
        ckpt.tensor("embeddings.LayerNorm.weight", shape=(4, 1))


def test_tensor_lookup_base_model_without_prefix(tmp_path):
    # IBertModel checkpoints store keys without "ibert."; callers may still ask with the prefix.
    tensors = {"embeddings.LayerNorm.shift": np.zeros(1, np.float32), "pooler.dense.bias": np.ones(4, np.float32)}
    ckpt = load_checkpoint(write_folder(tmp_path / "c", tensors))
    assert ckpt.tensor("ibert.embeddings.LayerNorm.shift").shape == (1,)
    assert ckpt.tensor("embeddings.LayerNorm.shift").shape == (1,)
    assert ckpt.has("ibert.pooler.dense.bias")


def test_half_precision_widened_to_float32(tmp_path):
    folder = write_folder(tmp_path / "c", weights=False)
    values = np.array([1.5, -3.25, 0.0078125, 0.0], np.float32)
    bf16_bits = (values.view(np.uint32) >> 16).astype("<u2")
    fp16 = values.astype(np.float16)
    write_raw_safetensors(
        folder / "model.safetensors",
        {
            "bf": ("BF16", (2, 2), bf16_bits.tobytes()),
            "hf": ("F16", (4,), fp16.astype("<f2").tobytes()),
            "ids": ("I64", (2,), np.array([3, 4], "<i8").tobytes()),
        },
    )
    ckpt = load_checkpoint(folder)
    assert ckpt.tensors["bf"].dtype == np.float32 and ckpt.tensors["bf"].shape == (2, 2)
    np.testing.assert_array_equal(ckpt.tensors["bf"].ravel(), values)
    assert ckpt.tensors["hf"].dtype == np.float32
    np.testing.assert_array_equal(ckpt.tensors["hf"], values)
    assert ckpt.tensors["ids"].dtype == np.int64


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_rejected(tmp_path, bad, dtype):
    tensors = make_tensors()
    w = tensors["ibert.encoder.layer.0.attention.self.query.weight"].astype(dtype)
    w[1, 2] = bad
    tensors["ibert.encoder.layer.0.attention.self.query.weight"] = w
    folder = write_folder(tmp_path / "c", tensors)
    with pytest.raises(CheckpointError, match=r"ibert\.encoder\.layer\.0\.attention\.self\.query\.weight"):
        load_checkpoint(folder)


def test_non_finite_bf16_rejected(tmp_path):
    folder = write_folder(tmp_path / "c", weights=False)
    bits = (np.array([1.0, np.nan], np.float32).view(np.uint32) >> 16).astype("<u2")
    write_raw_safetensors(folder / "model.safetensors", {"lm_head.bias": ("BF16", (2,), bits.tobytes())})
    with pytest.raises(CheckpointError, match=r"lm_head\.bias"):
        load_checkpoint(folder)


def test_unsupported_dtype_names_key(tmp_path):
    folder = write_folder(tmp_path / "c", weights=False)
    write_raw_safetensors(folder / "model.safetensors", {"odd.weight": ("F8_E4M3", (2,), b"\x01\x02")})
    with pytest.raises(CheckpointError, match=r"odd\.weight"):
        load_checkpoint(folder)


def test_single_file_preferred_over_index(tmp_path):
    a, b = split_in_two(make_tensors())
    folder = write_sharded(tmp_path / "c", {"model-00001-of-00002.safetensors": a,
                                            "model-00002-of-00002.safetensors": b})
    only = {"x": np.ones(2, np.float32)}
    stnp.save_file(only, str(folder / "model.safetensors"))
    ckpt = load_checkpoint(folder)
    assert list(ckpt.tensors) == ["x"]


# --------------------------------------------------------------------------------------------
# Sharded
# --------------------------------------------------------------------------------------------


def test_sharded_folder(tmp_path):
    tensors = make_tensors()
    a, b = split_in_two(tensors)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    folder = write_sharded(tmp_path / "c", dict(zip(names, (a, b))))
    ckpt = load_checkpoint(folder)
    assert_same_tensors(ckpt.tensors, tensors)
    assert ckpt.files == [str(folder / "config.json"), str(folder / "model.safetensors.index.json")] + [
        str(folder / n) for n in names
    ]
    # Loading through the index path directly works too.
    ckpt2 = load_checkpoint(folder / "model.safetensors.index.json")
    assert_same_tensors(ckpt2.tensors, tensors)


def test_sharded_duplicate_key(tmp_path):
    a, b = split_in_two(make_tensors())
    b = dict(b)
    dup = next(iter(a))
    b[dup] = a[dup]
    folder = write_sharded(tmp_path / "c", {"s1.safetensors": a, "s2.safetensors": b})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    msg = str(info.value)
    assert dup in msg and "s1.safetensors" in msg and "s2.safetensors" in msg


def test_sharded_missing_shard(tmp_path):
    a, b = split_in_two(make_tensors())
    folder = write_sharded(tmp_path / "c", {"s1.safetensors": a, "s2.safetensors": b})
    (folder / "s2.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"s2\.safetensors"):
        load_checkpoint(folder)


def test_sharded_key_missing_from_its_shard(tmp_path):
    a, b = split_in_two(make_tensors())
    weight_map = {**{k: "s1.safetensors" for k in a}, **{k: "s2.safetensors" for k in b},
                  "ghost.weight": "s2.safetensors"}
    folder = write_sharded(tmp_path / "c", {"s1.safetensors": a, "s2.safetensors": b}, weight_map)
    with pytest.raises(CheckpointError, match=r"ghost\.weight.*s2\.safetensors"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "index_text, pattern",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "JSON object"),
        ('{"metadata": {}}', "weight_map"),
        ('{"weight_map": {"a": "../evil.safetensors"}}', "evil"),
    ],
)
def test_bad_index(tmp_path, index_text, pattern):
    folder = write_folder(tmp_path / "c", weights=False)
    (folder / "model.safetensors.index.json").write_text(index_text)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(folder)
    assert "model.safetensors.index.json" in str(info.value)


# --------------------------------------------------------------------------------------------
# Folder error paths
# --------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(CheckpointError, match="nope"):
        load_checkpoint("./nope")


def test_missing_config(tmp_path):
    folder = write_folder(tmp_path / "c", config=None)
    with pytest.raises(CheckpointError, match=r"config\.json") as info:
        load_checkpoint(folder)
    assert str(folder) in str(info.value)


@pytest.mark.parametrize("text, pattern", [('{"hidden_size": 4,', "malformed JSON at line 1"),
                                           ('"just a string"', "JSON object"),
                                           ("", "malformed JSON")])
def test_malformed_config(tmp_path, text, pattern):
    folder = write_folder(tmp_path / "c")
    (folder / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(folder)
    assert str(folder / "config.json") in str(info.value)


def test_missing_weights(tmp_path):
    folder = write_folder(tmp_path / "c", weights=False)
    with pytest.raises(CheckpointError, match=r"model\.safetensors") as info:
        load_checkpoint(folder)
    assert "no weights" in str(info.value)


def test_pickle_checkpoint_refused(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "c", weights=False)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    import pickle

    def boom(*a, **k):  # pragma: no cover - would mean we unpickled
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    msg = str(info.value)
    assert "pytorch_model.bin" in msg and "pickle" in msg and "safetensors" in msg
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(folder / "pytorch_model.bin")


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "header_only"])
def test_malformed_safetensors(tmp_path, damage):
    folder = write_folder(tmp_path / "c")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    bad = {"truncate": data[:-5], "empty": b"", "garbage": b"this is not safetensors at all",
           "header_only": data[:12]}[damage]
    path.write_bytes(bad)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    assert str(path) in str(info.value)


def test_malformed_shard_names_shard(tmp_path):
    a, b = split_in_two(make_tensors())
    folder = write_sharded(tmp_path / "c", {"s1.safetensors": a, "s2.safetensors": b})
    (folder / "s2.safetensors").write_bytes((folder / "s2.safetensors").read_bytes()[:-3])
    with pytest.raises(CheckpointError, match=r"s2\.safetensors"):
        load_checkpoint(folder)


def test_read_safetensors_helper(tmp_path):
    p = tmp_path / "w.safetensors"
    stnp.save_file({"a": np.arange(3, dtype=np.float16)}, str(p))
    out = read_safetensors(p)
    assert out["a"].dtype == np.float32
    np.testing.assert_array_equal(out["a"], [0, 1, 2])


def test_resolve_file_local(tmp_path):
    folder = write_folder(tmp_path / "c")
    assert resolve_file(folder, "config.json") == str(folder / "config.json")
    assert resolve_file(folder, "tokenizer.json", required=False) is None
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        resolve_file(folder, "tokenizer.json")
    with pytest.raises(CheckpointError, match="relative"):
        resolve_file(folder, "../c/config.json")


# --------------------------------------------------------------------------------------------
# Hub repo ids, resolved from a fake offline cache
# --------------------------------------------------------------------------------------------


def test_hub_local_files_only_with_cache_dir(tmp_path, no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cache = tmp_path / "explicit_cache"
    tensors = make_tensors()
    src = write_folder(tmp_path / "src", tensors)
    snap = add_snapshot(cache, "org/tiny-ibert", COMMIT_NEW, folder_bytes(src))
    ckpt = load_checkpoint("org/tiny-ibert", cache_dir=cache, local_files_only=True)
    assert ckpt.config == CONFIG
    assert_same_tensors(ckpt.tensors, tensors)
    assert Path(ckpt.source) == snap
    assert ckpt.files[0] == str(snap / "config.json")
    assert (snap / "config.json").is_symlink()  # the cache layout is the real one
    assert no_network == []


def test_hub_env_cache_and_offline_env_at_runtime(hub_cache, tmp_path, no_network, monkeypatch):
    """HF_HUB_OFFLINE set after huggingface_hub was imported: huggingface_hub itself does not see
    it (it reads the variable once, at import), so the loader must read it at call time."""
    from huggingface_hub import constants

    tensors = make_tensors(1)
    add_snapshot(hub_cache, "org/tiny-ibert", COMMIT_NEW, folder_bytes(write_folder(tmp_path / "src", tensors)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert constants.HF_HUB_OFFLINE is False  # the library's import-time view is unchanged
    ckpt = load_checkpoint("org/tiny-ibert")  # no cache_dir, no local_files_only
    assert_same_tensors(ckpt.tensors, tensors)
    assert no_network == []


def test_hub_offline_constant(hub_cache, tmp_path, no_network, monkeypatch):
    """huggingface_hub's own offline switch (what HF_HUB_OFFLINE=1 at import time produces)."""
    from huggingface_hub import constants

    tensors = make_tensors(2)
    add_snapshot(hub_cache, "org/tiny-ibert", COMMIT_NEW, folder_bytes(write_folder(tmp_path / "src", tensors)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ckpt = load_checkpoint("org/tiny-ibert")
    assert_same_tensors(ckpt.tensors, tensors)
    assert no_network == []


def test_hub_offline_env_in_fresh_process(tmp_path):
    """The honest end-to-end check: HF_HUB_OFFLINE=1 and HF_HUB_CACHE set before Python starts,
    so huggingface_hub picks them up at import; no local_files_only and no cache_dir passed."""
    cache = tmp_path / "hf_cache"
    tensors = make_tensors(3)
    add_snapshot(cache, "org/tiny-ibert", COMMIT_NEW, folder_bytes(write_folder(tmp_path / "src", tensors)))
    script = """
import json, socket, sys
attempts = []
def refuse(*a, **k):
    attempts.append(a); raise OSError("network disabled")
socket.socket.connect = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse
from huggingface_hub import constants
from ibert_ref.loading import load_checkpoint
ck = load_checkpoint("org/tiny-ibert")
print(json.dumps({"offline": constants.HF_HUB_OFFLINE, "cache": constants.HF_HUB_CACHE,
                  "keys": sorted(ck.tensors), "sum": float(sum(float(v.sum()) for v in ck.tensors.values())),
                  "attempts": len(attempts), "source": ck.source}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), PYTHONPATH=str(REPO_ROOT), HF_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["offline"] is True and result["cache"] == str(cache)
    assert result["keys"] == sorted(tensors)
    assert result["sum"] == pytest.approx(float(sum(float(v.sum()) for v in tensors.values())))
    assert result["attempts"] == 0
    assert result["source"].startswith(str(cache))


def test_hub_revision_by_commit_and_branch(hub_cache, tmp_path, no_network):
    old, new = make_tensors(10), make_tensors(11)
    add_snapshot(hub_cache, "org/tiny-ibert", COMMIT_OLD, folder_bytes(write_folder(tmp_path / "old", old)),
                 refs=("v1",))
    add_snapshot(hub_cache, "org/tiny-ibert", COMMIT_NEW, folder_bytes(write_folder(tmp_path / "new", new)))
    # A commit hash already in the cache needs no network even without local_files_only
    # (first call of the test, so huggingface_hub's one-time registry fetch has not happened yet).
    assert_same_tensors(load_checkpoint("org/tiny-ibert", revision=COMMIT_OLD).tensors, old)
    assert no_network == []
    assert_same_tensors(load_checkpoint("org/tiny-ibert", local_files_only=True).tensors, new)
    by_hash = load_checkpoint("org/tiny-ibert", revision=COMMIT_OLD, local_files_only=True)
    assert_same_tensors(by_hash.tensors, old)
    assert COMMIT_OLD in by_hash.source
    assert_same_tensors(load_checkpoint("org/tiny-ibert", revision="v1", local_files_only=True).tensors, old)
    assert no_network == []
    with pytest.raises(CheckpointError, match="v2"):
        load_checkpoint("org/tiny-ibert", revision="v2", local_files_only=True)


def test_hub_sharded(hub_cache, tmp_path, no_network):
    tensors = make_tensors(4)
    a, b = split_in_two(tensors)
    src = write_sharded(tmp_path / "src", {"model-00001-of-00002.safetensors": a,
                                           "model-00002-of-00002.safetensors": b})
    snap = add_snapshot(hub_cache, "org/sharded", COMMIT_NEW, folder_bytes(src))
    ckpt = load_checkpoint("org/sharded", local_files_only=True)
    assert_same_tensors(ckpt.tensors, tensors)
    assert ckpt.files[1] == str(snap / "model.safetensors.index.json")
    assert no_network == []


def test_hub_missing_shard(hub_cache, tmp_path):
    a, b = split_in_two(make_tensors())
    src = write_sharded(tmp_path / "src", {"s1.safetensors": a, "s2.safetensors": b})
    files = folder_bytes(src)
    del files["s2.safetensors"]
    add_snapshot(hub_cache, "org/sharded", COMMIT_NEW, files)
    with pytest.raises(CheckpointError, match=r"s2\.safetensors"):
        load_checkpoint("org/sharded", local_files_only=True)


def test_hub_repo_not_cached(hub_cache, no_network):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("org/absent-model", local_files_only=True)
    msg = str(info.value)
    assert "org/absent-model" in msg and "config.json" in msg
    assert no_network == []


def test_hub_invalid_repo_id(hub_cache):
    with pytest.raises(CheckpointError, match="not-a--valid"):
        load_checkpoint("not-a--valid", local_files_only=True)


def test_hub_missing_weights_and_pickle_only(hub_cache, tmp_path):
    add_snapshot(hub_cache, "org/noweights", COMMIT_NEW, {"config.json": json.dumps(CONFIG).encode()})
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint("org/noweights", local_files_only=True)
    add_snapshot(hub_cache, "org/pickled", COMMIT_NEW,
                 {"config.json": json.dumps(CONFIG).encode(), "pytorch_model.bin": b"\x80\x04junk"})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("org/pickled", local_files_only=True)
    assert "pytorch_model.bin" in str(info.value) and "safetensors" in str(info.value)


def test_hub_missing_config_and_truncated_weights(hub_cache, tmp_path):
    src = write_folder(tmp_path / "src")
    files = folder_bytes(src)
    add_snapshot(hub_cache, "org/noconfig", COMMIT_NEW, {"model.safetensors": files["model.safetensors"]})
    with pytest.raises(CheckpointError, match=r"config\.json.*org/noconfig"):
        load_checkpoint("org/noconfig", local_files_only=True)
    files["model.safetensors"] = files["model.safetensors"][:-7]
    snap = add_snapshot(hub_cache, "org/truncated", COMMIT_NEW, files)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("org/truncated", local_files_only=True)
    assert str(snap / "model.safetensors") in str(info.value)


# --------------------------------------------------------------------------------------------
# Oracle: checkpoints written by transformers itself
# --------------------------------------------------------------------------------------------


@pytest.mark.oracle
def test_transformers_saved_checkpoints(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.IBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, vocab_size=100, max_position_embeddings=40,
                                   num_labels=3, quant_mode=True)
    torch.manual_seed(0)
    model = transformers.IBertForSequenceClassification(cfg).eval()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    for sub in ("single", "sharded"):
        ckpt = load_checkpoint(tmp_path / sub)
        assert ckpt.config["model_type"] == "ibert" and ckpt.config["quant_mode"] is True
        assert set(ckpt.tensors) == set(state)  # 184 keys, spec section 4
        for key, value in state.items():
            assert ckpt.tensors[key].dtype == value.dtype
            np.testing.assert_array_equal(ckpt.tensors[key], value)
        assert ckpt.tensor("encoder.layer.1.output.dense.weight", shape=(32, 64)).shape == (32, 64)

    # bf16 and fp16 checkpoints are widened exactly to what torch's .float() gives.
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        half = transformers.IBertForSequenceClassification(cfg).eval().to(dtype)
        half.save_pretrained(tmp_path / name)
        ckpt = load_checkpoint(tmp_path / name)
        for key, value in half.state_dict().items():
            assert ckpt.tensors[key].dtype == np.float32
            np.testing.assert_array_equal(ckpt.tensors[key], value.float().numpy())


# ---------------------------------------------------------------------------------------------
# Fuzz: a checkpoint that loads must run. Tensor values replaced by extreme finite floats
# (ranges, LayerNorm parameters and shifts, weights, biases, embeddings): loading either
# refuses it with a ValueError (CheckpointError / CompileError naming the key) or every
# datapath runs a forward; a degenerate input row may be refused with a ValueError too, but
# nothing else escapes (no ZeroDivisionError, OverflowError, IndexError, ...), and the integer
# datapaths never produce int64's minimum (a NaN cast) nor a non-finite output.
FUZZ_CONFIG = {
    "model_type": "ibert", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
    "intermediate_size": 16, "vocab_size": 20, "max_position_embeddings": 12, "type_vocab_size": 1,
    "pad_token_id": 1, "quant_mode": True, "hidden_act": "gelu", "force_dequant": "none",
}
FUZZ_IDS = np.array([[0, 5, 6, 7, 2, 1], [0, 9, 2, 1, 1, 1]])
FUZZ_MASK = (FUZZ_IDS != 1).astype(np.int64)
EXTREMES = [0.0, 1e-38, 1e-30, 1e-12, 1e-6, 1e-3, 0.5, 1.0, 31.0, 32.0, 100.0, 1e4, 16383.0, 16385.0, 1e8,
            1e15, 1e30, 3.4e38]


@pytest.fixture(scope="module")
def fuzz_base():
    from ibert_ref import strategies as S

    return S.make_numpy_checkpoint(FUZZ_CONFIG, seed=0)


def _fuzz_forward(ckpt):
    from ibert_ref.model import IBertModel

    for datapath in ("exact", "transformers", "arm"):
        try:
            with np.errstate(all="ignore"):  # extreme weights overflow float32 in quantization (then clamp)
                model = IBertModel.from_checkpoint(ckpt, datapath=datapath)
        except ValueError as exc:  # CheckpointError / CompileError: refused at load, with a message
            assert str(exc)
            return "refused"
        try:
            with np.errstate(all="ignore"):
                out = model(FUZZ_IDS, attention_mask=FUZZ_MASK, return_trace=True)
        except ValueError as exc:  # a degenerate row (constant LayerNorm input), named
            assert str(exc)
            continue
        if datapath != "transformers":  # transformers' own float32 emulation may give NaN
            assert np.isfinite(out.last_hidden_state).all(), datapath
            for name, v in out.trace.items():
                assert v.size == 0 or int(v.min()) > np.iinfo(np.int64).min, (datapath, name)
    return "ran"


def test_fuzzed_values_load_and_run_or_are_refused(fuzz_base, tmp_path_factory):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    keys = sorted(fuzz_base.tensors)
    ranges = sorted({k[: -len(".x_max")] for k in keys if k.endswith(".x_max")})
    outcomes = []

    @settings(max_examples=60, deadline=None, database=None)
    @given(st.data())
    def run(data):
        t = dict(fuzz_base.tensors)
        for _ in range(data.draw(st.integers(1, 3))):
            if data.draw(st.booleans()):  # a QuantAct range
                key = data.draw(st.sampled_from(ranges))
                mag = data.draw(st.sampled_from(EXTREMES))
                lo = -mag if data.draw(st.booleans()) else data.draw(st.sampled_from([0.0, mag / 2]))
                t[key + ".x_min"] = np.array([lo], np.float32)
                t[key + ".x_max"] = np.array([mag], np.float32)
            else:  # any other tensor, scaled or filled
                key = data.draw(st.sampled_from([k for k in keys if not k.endswith((".x_min", ".x_max"))]))
                v = np.asarray(t[key], np.float32)
                how = data.draw(st.sampled_from(["fill", "scale", "negate"]))
                x = np.float32(data.draw(st.sampled_from(EXTREMES)))
                t[key] = (np.full_like(v, x) if how == "fill" else v * x if how == "scale" else -v).astype(np.float32)
        folder = tmp_path_factory.mktemp("fuzz")
        stnp.save_file(t, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(FUZZ_CONFIG))
        try:
            ckpt = load_checkpoint(folder)
        except CheckpointError as exc:
            assert str(exc)
            outcomes.append("refused")
            return
        outcomes.append(_fuzz_forward(ckpt))

    run()
    assert "ran" in outcomes and "refused" in outcomes  # the fuzzer reaches the forward pass
