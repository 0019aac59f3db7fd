"""Tests for ibert_ref.tokenizer.

Tiny tokenizers are trained/built locally with the ``tokenizers`` library; transformers'
AutoTokenizer on the same folder is the oracle (skipped when transformers is not installed).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from ibert_ref.loading import CheckpointError
from ibert_ref.tokenizer import Tokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world",
    "integer only bert quantization",
    "I-BERT runs on integers!",
] * 5

TEXTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog <mask> zzz",
    " I-BERT  runs\u00e9 <s>x</s>",
    "",
]

ROBERTA_SPECIALS = {
    "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
    "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
}


def build_roberta_bpe() -> HFTokenizer:
    """Byte-level BPE like RoBERTa: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return tok


def write_roberta_folder(folder: Path, tokenizer_class="RobertaTokenizer", with_json=True,
                         with_vocab_merges=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_roberta_bpe()
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    if with_json:
        tok.save(str(folder / "tokenizer.json"))
    if with_vocab_merges:
        tok.model.save(str(folder))  # vocab.json + merges.txt
    config = {"tokenizer_class": tokenizer_class, "model_max_length": 16, **ROBERTA_SPECIALS}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"model_type": "ibert", "pad_token_id": 1}))
    return folder


def write_bert_folder(folder: Path) -> Path:
    """WordLevel, lowercase, whitespace split, [CLS] $A [SEP] template; [PAD]=0."""
    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for line in CORPUS for w in line.lower().replace("!", " ! ").replace("-", " - ").split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.decoder = decoders.WordPiece()
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
              "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def oracle(folder: Path, texts, **kwargs):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    out = ref(texts, **kwargs)
    return ref, out


def assert_matches(mine, ref):
    assert mine["input_ids"].dtype == np.int64 and mine["attention_mask"].dtype == np.int64
    assert mine["input_ids"].tolist() == ref["input_ids"]
    assert mine["attention_mask"].tolist() == ref["attention_mask"]


# --------------------------------------------------------------------------------------------
# Oracle comparisons
# --------------------------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("tokenizer_class", ["RobertaTokenizer", "PreTrainedTokenizerFast"])
def test_roberta_matches_transformers(tmp_path, tokenizer_class):
    folder = write_roberta_folder(tmp_path / "tok", tokenizer_class)
    tok = Tokenizer.from_pretrained(folder)
    ref_tok, ref = oracle(folder, TEXTS, padding=True)
    mine = tok(TEXTS)
    assert_matches(mine, ref)
    assert mine["input_ids"].shape == (len(TEXTS), max(map(len, ref["input_ids"])))
    assert len(set(mine["attention_mask"].sum(1).tolist())) > 1  # really different lengths
    assert mine["input_ids"][:, 0].tolist() == [0] * len(TEXTS)  # <s> first
    assert tok.pad_token_id == ref_tok.pad_token_id == 1
    assert tok.vocab_size == len(ref_tok)

    # Truncation (explicit max_length and the tokenizer_config model_max_length) and max_length padding.
    assert_matches(tok(TEXTS, truncation=True, max_length=7), ref_tok(TEXTS, padding=True, truncation=True, max_length=7))
    assert_matches(tok(TEXTS, truncation=True), ref_tok(TEXTS, padding=True, truncation=True))
    assert_matches(tok(TEXTS, padding="max_length", truncation=True, max_length=30),
                   ref_tok(TEXTS, padding="max_length", truncation=True, max_length=30))
    # Single string and no special tokens.
    assert_matches(tok(TEXTS[1]), ref_tok([TEXTS[1]], padding=True))
    assert_matches(tok(TEXTS, add_special_tokens=False), ref_tok(TEXTS, padding=True, add_special_tokens=False))
    # Decoding.
    ids = mine["input_ids"][2]
    assert tok.decode(ids) == ref_tok.decode(ids.tolist())
    assert tok.decode(ids, skip_special_tokens=True) == ref_tok.decode(ids.tolist(), skip_special_tokens=True)


@pytest.mark.oracle
def test_bert_template_matches_transformers(tmp_path):
    folder = write_bert_folder(tmp_path / "bert")
    texts = ["Hello World", "the QUICK brown fox jumps over the lazy dog !", "integer unknownword", "x"]
    tok = Tokenizer.from_pretrained(folder)
    ref_tok, ref = oracle(folder, texts, padding=True)
    mine = tok(texts)
    assert_matches(mine, ref)
    assert mine["input_ids"][:, 0].tolist() == [2] * len(texts)  # [CLS]
    assert tok.pad_token_id == ref_tok.pad_token_id == 0
    assert_matches(tok(texts, truncation=True, max_length=4), ref_tok(texts, padding=True, truncation=True, max_length=4))


@pytest.mark.oracle
def test_vocab_merges_fallback_matches_transformers(tmp_path):
    folder = write_roberta_folder(tmp_path / "vm", with_json=False, with_vocab_merges=True)
    assert not (folder / "tokenizer.json").exists()
    tok = Tokenizer.from_pretrained(folder)
    ref_tok, ref = oracle(folder, TEXTS, padding=True)
    assert_matches(tok(TEXTS), ref)
    assert tok.pad_token_id == 1
    ids = tok(TEXTS)["input_ids"][1]
    assert tok.decode(ids, skip_special_tokens=True) == ref_tok.decode(ids.tolist(), skip_special_tokens=True)


# --------------------------------------------------------------------------------------------
# Behaviour without the oracle
# --------------------------------------------------------------------------------------------


def test_right_padding_and_shapes(tmp_path):
    tok = Tokenizer.from_pretrained(write_roberta_folder(tmp_path / "tok"))
    out = tok(["hello world", "the quick brown fox"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape and ids.ndim == 2 and ids.shape[0] == 2
    n0 = int(mask[0].sum())
    assert mask[0, :n0].all() and not mask[0, n0:].any()
    assert (ids[0, n0:] == tok.pad_token_id).all()
    assert ids[0, n0 - 1] == 2  # </s> before padding
    assert mask[1].all()
    assert tok.decode(ids) == [tok.decode(ids[0]), tok.decode(ids[1])]


def test_pad_id_from_model_config(tmp_path):
    # No <pad>/[PAD] and no tokenizer_config: the pad id comes from config.json.
    folder = tmp_path / "odd"
    folder.mkdir()
    vocab = {"<blank>": 0, "<cls>": 1, "a": 2, "b": 3, "<oov>": 4}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="<oov>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<cls> $A", special_tokens=[("<cls>", 1)])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"pad_token_id": 0}))
    tok = Tokenizer.from_pretrained(folder)
    assert tok.pad_token_id == 0
    out = tok(["a b a", "b"])
    assert out["input_ids"].tolist() == [[1, 2, 3, 2], [1, 3, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_pad_token_from_tokenizer_config_wins(tmp_path):
    folder = write_roberta_folder(tmp_path / "tok")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["pad_token"] = {"content": "<unk>", "__type": "AddedToken"}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_pretrained(folder)
    assert tok.pad_token_id == 3


def test_argument_errors(tmp_path):
    tok = Tokenizer.from_pretrained(write_roberta_folder(tmp_path / "tok"))
    with pytest.raises(ValueError, match="different lengths"):
        tok(["hello", "hello world the quick"], padding=False)
    same = tok(["hello", "hello"], padding=False)
    assert same["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="max_length"):
        tok(["hello world"], padding="max_length")
    with pytest.raises(ValueError, match="truncation"):
        tok(["the quick brown fox jumps"], padding="max_length", max_length=3)
    with pytest.raises(ValueError):
        tok([])
    with pytest.raises(TypeError):
        tok(["ok", 3])


def test_no_pad_token(tmp_path):
    folder = tmp_path / "nopad"
    folder.mkdir()
    backend = HFTokenizer(models.WordLevel({"a": 0, "b": 1, "?": 2}, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(folder / "tokenizer.json"))
    tok = Tokenizer.from_pretrained(folder)
    assert tok.pad_token_id is None
    assert tok(["a b", "b a"])["input_ids"].tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="pad token"):
        tok(["a b", "a"])


def test_missing_and_malformed_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        Tokenizer.from_pretrained(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "a" / "b" / "c")
    bad = write_roberta_folder(tmp_path / "bad")
    (bad / "tokenizer.json").write_text("{ not a tokenizer")
    with pytest.raises(CheckpointError, match=r"bad.tokenizer\.json"):
        Tokenizer.from_pretrained(bad)
    badcfg = write_roberta_folder(tmp_path / "badcfg")
    (badcfg / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json"):
        Tokenizer.from_pretrained(badcfg)


# --------------------------------------------------------------------------------------------
# Hub repo id from a fake offline cache
# --------------------------------------------------------------------------------------------


def add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes]) -> Path:
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    (storage / "refs").mkdir(exist_ok=True)
    snap = storage / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)
    (storage / "refs" / "main").write_text(commit)
    return snap


def test_from_hub_cache_offline(tmp_path, monkeypatch):
    src = write_roberta_folder(tmp_path / "src")
    cache = tmp_path / "cache"
    snap = add_snapshot(cache, "org/tiny-tok", "c" * 40, {p.name: p.read_bytes() for p in src.iterdir()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = Tokenizer.from_pretrained("org/tiny-tok", cache_dir=cache)
    local = Tokenizer.from_pretrained(src)
    assert tok.source == str(snap)
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(tok(TEXTS)[key], local(TEXTS)[key])
    with pytest.raises(CheckpointError, match="org/other"):
        Tokenizer.from_pretrained("org/other", cache_dir=cache, local_files_only=True)


# --------------------------------------------------------------------------------------------
# The bundled tiny model's tokenizer (RoBERTa byte-level BPE, <mask> with lstrip)
# --------------------------------------------------------------------------------------------

MASK_TEXTS = [
    "The capital of France is <mask>.",
    "hello   <mask>  world",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "",
]


def bundled_folder() -> Path:
    from ibert_ref.data import default_model_path

    folder = Path(default_model_path())
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("bundled tiny model has no tokenizer.json")
    return folder


@pytest.mark.oracle
def test_bundled_default_matches_transformers():
    folder = bundled_folder()
    tok = Tokenizer.from_pretrained()  # None -> bundled tiny model
    assert Path(tok.source) == folder
    _, ref = oracle(folder, MASK_TEXTS, padding=True)
    assert_matches(tok(MASK_TEXTS), ref)


@pytest.mark.oracle
def test_bundled_vocab_merges_fallback_matches_transformers(tmp_path):
    folder = bundled_folder()
    dst = tmp_path / "vm"
    dst.mkdir()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            (dst / name).write_bytes((folder / name).read_bytes())
    HFTokenizer.from_file(str(folder / "tokenizer.json")).model.save(str(dst))
    tok = Tokenizer.from_pretrained(dst)
    _, ref = oracle(dst, MASK_TEXTS, padding=True)
    assert_matches(tok(MASK_TEXTS), ref)
