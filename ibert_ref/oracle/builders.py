"""Build small, calibrated, non-degenerate quant-mode I-BERT models with transformers (the oracle).

Two builders and one report:

* :func:`make_tokenizer` trains a RoBERTa-style byte-level BPE tokenizer on a built-in English
  corpus (:data:`CORPUS`) and saves it so that both ``tokenizers.Tokenizer.from_file`` and
  ``transformers.AutoTokenizer.from_pretrained`` load it.
* :func:`make_calibrated_ibert` builds ``IBertConfig(quant_mode=True)``, re-initialises the random
  weights so that the integer pipeline is exercised (non-uniform attention, activations that fill
  their ranges, LayerNorm gammas of both signs), calibrates the QuantAct ranges and LayerNorm
  shifts with train-mode forward passes, and saves it with ``save_pretrained``.
* :func:`calibration_report` lists every QuantAct's ``x_min``/``x_max``/scale, every LayerNorm
  ``shift`` and how many attention rows came out uniform.

Why the re-initialisation matters (see ``docs/ibert-dataflow.md``): with transformers' default
init (std 0.02) the attention-score scale is so small that IntSoftmax's 16-bit QuantAct overflows
float32 and every attention row becomes uniform; and a quant-mode model that was never run in
``train()`` mode has all QuantAct ranges at +-1e-5, so every activation saturates.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint_schema import is_dead_quant_act

# RoBERTa special tokens, in id order. <mask> is the last special token (id 4).
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4

# A built-in corpus of varied English sentences: tokenizer training data and calibration text.
CORPUS = [
    "The capital of France is Paris.",
    "The capital of Germany is Berlin, and the capital of Italy is Rome.",
    "Madrid is the largest city in Spain.",
    "Tokyo, the capital of Japan, is one of the biggest cities in the world.",
    "The river Nile flows north through Egypt into the Mediterranean Sea.",
    "Mount Everest is the highest mountain on Earth.",
    "Canada has more lakes than any other country.",
    "The Amazon rainforest covers much of northern Brazil.",
    "Australia is both a country and a continent.",
    "London is on the river Thames.",
    "Lisbon is a city of hills, trams and old tiled houses.",
    "The Sahara is the largest hot desert in the world.",
    "Iceland sits on the boundary between two tectonic plates.",
    "New York is often called the city that never sleeps.",
    "The Alps stretch across eight countries in Europe.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The Earth goes around the Sun once a year.",
    "Light travels faster than sound.",
    "A molecule of water has two hydrogen atoms and one oxygen atom.",
    "Plants turn sunlight, water and carbon dioxide into sugar.",
    "The heart pumps blood through the arteries and veins.",
    "Electrons carry a negative charge, while protons carry a positive one.",
    "The Moon has no atmosphere to speak of.",
    "Gravity keeps the planets in orbit around the Sun.",
    "Diamonds and graphite are both made of carbon.",
    "Sound cannot travel through the vacuum of space.",
    "The human brain contains billions of neurons.",
    "Jupiter is the largest planet in our solar system.",
    "Ice floats because it is less dense than liquid water.",
    "Bees help flowers by carrying pollen from one plant to another.",
    "She opened the window and let the cool air in.",
    "He forgot his umbrella, so he got wet on the way home.",
    "We had pasta with tomato sauce for dinner.",
    "The children played football in the park until it got dark.",
    "My grandmother grows roses and tomatoes in her garden.",
    "The cat slept on the warm windowsill all afternoon.",
    "Could you pass me the salt, please?",
    "I think it will rain tomorrow morning.",
    "They walked along the beach and collected shells.",
    "The bakery on the corner sells fresh bread every day.",
    "Our train was delayed by twenty minutes.",
    "Please turn off the lights when you leave the room.",
    "The dog barked loudly at the postman.",
    "She reads a new book every week.",
    "The coffee was too hot to drink.",
    "He repaired the old bicycle with a few simple tools.",
    "The museum opens at nine and closes at five.",
    "We listened to music while we cooked.",
    "The meeting has been moved to Thursday afternoon.",
    "Don't forget to water the plants!",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "Where did you put the keys?",
    "What time does the library close on Sundays?",
    "Who wrote the letter that arrived this morning?",
    "Is it true that octopuses have three hearts?",
    "When does the next bus leave for the airport?",
    "Which road leads to the old castle?",
    "The computer program sorts a list of numbers in ascending order.",
    "A neural network learns by adjusting its weights.",
    "Integer arithmetic is fast and predictable on small chips.",
    "The model reads a sentence and predicts the missing word.",
    "Quantization stores each weight in eight bits instead of thirty-two.",
    "The server crashed because it ran out of memory.",
    "She wrote a short script to rename all the files.",
    "Encryption keeps messages private as they cross the network.",
    "The compiler reported an error on line forty-two.",
    "Every byte of the file was checked twice.",
    "The robot arm picked up the red block and placed it on the blue one.",
    "A transformer uses attention to mix information between tokens.",
    "Layer normalization rescales each vector to unit variance.",
    "The softmax function turns scores into probabilities.",
    "There are seven days in a week and twelve months in a year.",
    "Three plus four equals seven.",
    "The price rose from 12 dollars to 15 dollars in 2021.",
    "Half of one hundred is fifty.",
    "The recipe needs 2 eggs, 250 grams of flour and a cup of milk.",
    "The marathon is just over forty-two kilometres long.",
    "He was born on the 3rd of May, 1987.",
    "The temperature dropped to minus ten degrees last night.",
    "Room 404 is at the end of the corridor.",
    "About 70 percent of the Earth's surface is covered by water.",
    "Shakespeare wrote plays such as Hamlet and Macbeth.",
    "The Great Wall of China is thousands of kilometres long.",
    "The first person to walk on the Moon was Neil Armstrong.",
    "The Roman Empire lasted for several centuries.",
    "Mozart composed his first symphony as a child.",
    "The printing press changed how books were made.",
    "The pyramids of Giza were built thousands of years ago.",
    "Marie Curie won two Nobel prizes.",
    "The Olympic Games began in ancient Greece.",
    "Leonardo da Vinci painted the Mona Lisa.",
    "The team won the final by two goals to one.",
    "She swims a kilometre every morning before work.",
    "Tennis players must keep the ball inside the lines.",
    "The cyclists climbed the steep mountain pass in the rain.",
    "Chess is a game of strategy played on a board of sixty-four squares.",
    "The referee blew the whistle at the end of the match.",
    "He practises the piano for an hour each evening.",
    "The orchestra tuned their instruments before the concert.",
    "Jazz grew out of the blues in the early twentieth century.",
    "The film was long, but the ending was worth the wait.",
    "She painted the fence a bright shade of green.",
    "The poem describes the sea at night.",
    "Autumn leaves turn red, orange and yellow.",
    "Snow fell quietly over the village.",
    "The storm knocked down several trees along the road.",
    "A rainbow appeared after the summer shower.",
    "The wind was strong enough to lift the tent.",
    "Spring brings longer days and warmer weather.",
    "Fog covered the harbour until noon.",
    "Elephants are the largest animals that live on land.",
    "Penguins cannot fly, but they are excellent swimmers.",
    "The fox jumped over the lazy dog.",
    "Whales breathe air through a blowhole on top of their heads.",
    "An owl can turn its head almost all the way around.",
    "Ants live in large colonies with a single queen.",
    "The horse galloped across the open field.",
    "Dolphins use clicks and whistles to communicate.",
    "The shop assistant wrapped the present in silver paper.",
    "Prices at the market are lower on Saturday afternoons.",
    "The bank will open a new branch next month.",
    "He saved a little money every week for a new guitar.",
    "The company hired ten new engineers this year.",
    "Farmers sell apples, cheese and honey at the fair.",
    "The doctor told him to drink more water and rest.",
    "Regular exercise is good for the heart.",
    "She took the medicine twice a day for a week.",
    "Fresh vegetables and fruit are part of a healthy diet.",
    "The nurse checked the patient's temperature.",
    "Sleep helps the body recover after a long day.",
    "The students wrote an essay about climate change.",
    "Our teacher explained the theorem with a simple drawing.",
    "The exam starts at ten o'clock sharp.",
    "He learned to speak Spanish in two years.",
    "The library lends books, films and music.",
    "Children learn languages quickly.",
    "The professor's lecture was about ancient trade routes.",
    "Please write your name at the top of the page.",
    "\"Hello,\" she said, \"it is nice to meet you.\"",
    "Wait -- did you hear that noise?",
    "The list included: apples, pears; plums, and figs.",
    "It's not what you said; it's how you said it.",
    "Yes, no, maybe: the answer depends on the question.",
    "The sign read: NO PARKING (except Sundays).",
    "Call me at 555-0199 after 6 p.m.",
    "The e-mail address was written on a scrap of paper.",
    "I can't believe it's already December!",
    "Well, that was unexpected.",
    "The old lighthouse has guided ships for over a century.",
    "A bridge of stone crosses the narrow valley.",
    "The city council approved the plan for a new park.",
    "Volunteers cleaned the beach on Saturday morning.",
    "The hotel room had a view of the lake.",
    "They built a small cabin in the woods.",
    "The garden gate squeaked every time it opened.",
    "The map showed a hidden path behind the waterfall.",
    "Our neighbours invited us to a barbecue.",
    "The parcel arrived a day earlier than expected.",
]


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

def make_tokenizer(folder, corpus=None, vocab_size=1024, model_max_length=128, min_frequency=2):
    """Train a RoBERTa-style byte-level BPE tokenizer and save it into ``folder``.

    Special tokens and ids: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4 (the
    ``pad_token_id=1`` convention of RoBERTa/I-BERT). The post-processor is ``RobertaProcessing``
    (``<s> A </s>`` and ``<s> A </s></s> B </s>``). As in roberta-base, ``<mask>`` strips the space
    on its left (``"is <mask>."`` -> ``is``, ``<mask>``, ``.``). Training is deterministic for a given
    corpus.

    Writes ``tokenizer.json`` (self-contained; ``tokenizers.Tokenizer.from_file`` loads it),
    ``tokenizer_config.json`` and ``special_tokens_map.json`` (so that
    ``transformers.AutoTokenizer.from_pretrained(folder)`` loads it as a ``RobertaTokenizer``).

    Args:
        folder: output directory (created if needed).
        corpus: list of training sentences; defaults to the built-in :data:`CORPUS`.
        vocab_size: target vocabulary size including the special tokens and the 256 byte symbols;
            the trained vocabulary can be smaller when the corpus runs out of merges.
        model_max_length: written to ``tokenizer_config.json``.
        min_frequency: minimum pair count for a BPE merge (1 lets a small corpus reach a
            larger vocabulary).

    Returns:
        The trained ``tokenizers.Tokenizer``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = list(CORPUS if corpus is None else corpus)

    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(t, lstrip=(t == "<mask>"), rstrip=False, normalized=False, special=True)
                        for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", EOS_ID), ("<s>", BOS_ID), trim_offsets=True, add_prefix_space=False
    )
    tok.save(str(folder / "tokenizer.json"))

    special_map = {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
        "pad_token": "<pad>", "cls_token": "<s>",
        "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False,
                       "single_word": False},
    }
    tok_config = {
        "tokenizer_class": "RobertaTokenizer",
        "model_max_length": int(model_max_length),
        "add_prefix_space": False,
        "trim_offsets": True,
        "errors": "replace",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
        "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>",
    }
    _write_json(folder / "special_tokens_map.json", special_map)
    _write_json(folder / "tokenizer_config.json", tok_config)
    return tok


def encode_corpus(tokenizer, corpus=None, max_length=None):
    """Encode sentences with ``<s> ... </s>``; returns a list of id lists (truncated to max_length)."""
    corpus = list(CORPUS if corpus is None else corpus)
    ids = [enc.ids for enc in tokenizer.encode_batch(corpus)]
    if max_length is not None:
        ids = [s[: max_length - 1] + [EOS_ID] if len(s) > max_length else s for s in ids]
    return ids


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

def _reinit_weights(model, *, qk_std, weight_std, emb_std, bias_std, gamma_low, gamma_high,
                    negative_gamma_fraction, generator):
    """Re-initialise a fresh I-BERT so that its integer pipeline is not degenerate.

    * query/key QuantLinear weights: normal(0, qk_std) -- large enough that the attention-score
      scale stays far above the ~4e-5 where IntSoftmax's float32 QuantAct overflows;
    * other QuantLinear and head nn.Linear weights: normal(0, weight_std or 1/sqrt(fan_in));
    * all Linear biases: normal(0, bias_std) (non-zero, so the int32 bias path is exercised);
    * QuantEmbedding tables: normal(0, emb_std), the ``padding_idx`` row (word and position
      tables) zero as in transformers' own init;
    * IntLayerNorm gamma: |gamma| uniform in [gamma_low, gamma_high], sign flipped for a fraction
      ``negative_gamma_fraction`` of the channels (negative per-channel scales); beta normal(0, 0.3).
    The tied MaskedLM decoder is skipped (its weight is the word-embedding table).
    """
    from transformers.models.ibert.quant_modules import IntLayerNorm, QuantEmbedding, QuantLinear

    def normal_(t, std):
        t.copy_(torch.randn(t.shape, generator=generator, dtype=torch.float32) * std)

    with torch.no_grad():
        for name, mod in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(mod, QuantLinear) or (isinstance(mod, torch.nn.Linear) and leaf != "decoder"):
                fan_in = mod.weight.shape[1]
                if isinstance(mod, QuantLinear) and leaf in ("query", "key"):
                    std = qk_std
                else:
                    std = weight_std if weight_std is not None else 1.0 / math.sqrt(fan_in)
                normal_(mod.weight, std)
                if mod.bias is not None:
                    normal_(mod.bias, bias_std)
            elif isinstance(mod, QuantEmbedding):
                normal_(mod.weight, emb_std)
                if mod.padding_idx is not None:  # as transformers' init: the <pad> row is zero
                    mod.weight[mod.padding_idx].zero_()
            elif isinstance(mod, IntLayerNorm):
                n = mod.weight.shape[0]
                mag = gamma_low + (gamma_high - gamma_low) * torch.rand(n, generator=generator)
                sign = torch.where(torch.rand(n, generator=generator) < negative_gamma_fraction, -1.0, 1.0)
                mod.weight.copy_(mag * sign)
                normal_(mod.bias, 0.3)


def random_calibration_batches(vocab_size, n_batches, *, batch_size=4, max_len=32, seed=0):
    """Random id batches for calibration: ``[(input_ids, attention_mask), ...]`` (int64 tensors).

    Each sequence is ``<s> w ... w </s>`` with w drawn from the non-special ids [5, vocab_size).
    Even-numbered batches are padded to a common length with ``<pad>``=1 (attention_mask 0),
    odd-numbered ones have equal lengths and no padding. Lengths vary between batches.
    """
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(n_batches):
        if b % 2 == 0:
            lens = rng.integers(3, max_len + 1, size=batch_size)
        else:
            lens = np.full(batch_size, rng.integers(3, max_len + 1))
        seqs = []
        for n in lens:
            body = rng.integers(5, vocab_size, size=int(n) - 2).tolist()
            seqs.append([BOS_ID] + body + [EOS_ID])
        batches.append(pad_batch(seqs))
    return batches


def pad_batch(seqs, pad_id=PAD_ID):
    """Right-pad id lists with ``pad_id``; returns (input_ids, attention_mask) int64 tensors."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _id_batches(calib_ids, batch_size, seed):
    """Group a list of id sequences into padded batches (shuffled deterministically)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(calib_ids))
    batches = []
    for i in range(0, len(order), batch_size):
        batches.append(pad_batch([list(calib_ids[j]) for j in order[i : i + batch_size]]))
    return batches


def make_calibrated_ibert(
    folder=None,
    *,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=128,
    max_position_embeddings=66,
    type_vocab_size=1,
    qk_std=0.3,
    weight_std=None,
    emb_std=1.0,
    bias_std=0.1,
    gamma_range=(0.5, 1.5),
    negative_gamma_fraction=0.1,
    seed=0,
    calib_batches=8,
    calib_batch_size=4,
    calib_max_len=32,
    force_dequant="none",
    model_class="IBertModel",
    calib_ids=None,
    check_reload=True,
    **config_kwargs,
):
    """Build, re-initialise, calibrate and (optionally) save a quant-mode transformers I-BERT.

    Steps:

    1. ``IBertConfig(quant_mode=True, hidden_dropout_prob=0, attention_probs_dropout_prob=0,
       pad_token_id=1, bos_token_id=0, eos_token_id=2, force_dequant=...)``; ``model_class`` is the
       name of a transformers class (``"IBertModel"``, ``"IBertForSequenceClassification"``, ...).
    2. ``torch.manual_seed(seed)``, construct, then re-initialise (see ``_reinit_weights``):
       q/k weights std ``qk_std`` (keep >= 0.1: smaller score scales overflow IntSoftmax's float32
       16-bit QuantAct and make attention uniform), other weights std ``weight_std`` (default
       ``1/sqrt(fan_in)``), biases std ``bias_std``, embeddings std ``emb_std``, LayerNorm
       |gamma| in ``gamma_range`` with a fraction ``negative_gamma_fraction`` negative.
    3. Calibrate: ``model.train()`` and ``calib_batches`` forward passes under ``torch.no_grad()``.
       The batches are ``calib_ids`` (a list of id sequences, padded into batches of
       ``calib_batch_size``; cycled if shorter than ``calib_batches``) or, when None, random
       batches from :func:`random_calibration_batches` (alternately padded / unpadded, lengths
       3..``calib_max_len``). Dropout is 0, so train mode only updates QuantAct ranges (first
       batch initialises, then EMA 0.95) and LayerNorm shifts. Then ``model.eval()``.
    4. If ``folder`` is given: ``save_pretrained(folder, safe_serialization=True)``
       (config.json + model.safetensors) and, when ``check_reload``, reload it and assert that the
       outputs are bit-identical on a calibration batch.

    Args:
        folder: where to save, or None to keep the model in memory only.
        config_kwargs: extra ``IBertConfig`` fields (e.g. ``num_labels``).

    Returns:
        ``(model, folder)``: the calibrated model in eval mode, and ``Path(folder)`` or None.
    """
    import transformers
    from transformers import IBertConfig

    config = IBertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=type_vocab_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        quant_mode=True,
        force_dequant=force_dequant,
        **config_kwargs,
    )
    cls = getattr(transformers, model_class)
    torch.manual_seed(seed)
    model = cls(config)
    gen = torch.Generator().manual_seed(seed)
    _reinit_weights(model, qk_std=qk_std, weight_std=weight_std, emb_std=emb_std, bias_std=bias_std,
                    gamma_low=gamma_range[0], gamma_high=gamma_range[1],
                    negative_gamma_fraction=negative_gamma_fraction, generator=gen)

    max_len = min(calib_max_len, max_position_embeddings - PAD_ID - 1)
    if calib_ids is not None:
        calib_ids = [list(s)[:max_len] for s in calib_ids]
        batches = _id_batches(calib_ids, calib_batch_size, seed)
        batches = [batches[i % len(batches)] for i in range(max(calib_batches, len(batches)))]
    else:
        batches = random_calibration_batches(vocab_size, calib_batches, batch_size=calib_batch_size,
                                             max_len=max_len, seed=seed)
    if model_class == "IBertForMultipleChoice":  # its inputs are (batch, num_choices, seq): one choice
        batches = [(ids[:, None, :], mask[:, None, :]) for ids, mask in batches]
    calibrate(model, batches)

    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        if check_reload:
            ids, mask = batches[0]
            reloaded = cls.from_pretrained(folder).eval()
            with torch.no_grad():
                a = _first_tensor(model(input_ids=ids, attention_mask=mask))
                b = _first_tensor(reloaded(input_ids=ids, attention_mask=mask))
            if not torch.equal(a, b):
                raise RuntimeError(f"reloaded model in {folder} differs from the built one")
    return model, folder


def calibrate(model, batches):
    """Run train-mode forward passes (no grad) over ``[(input_ids, attention_mask), ...]``, then eval().

    Updates only QuantAct ``x_min``/``x_max`` (EMA) and IntLayerNorm ``shift`` when dropout is 0.
    """
    model.train()
    with torch.no_grad():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
    model.eval()
    return model


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


def _base_model(model):
    return model.ibert if hasattr(model, "ibert") else model


def calibration_report(model, input_ids=None, attention_mask=None):
    """Summarise a calibrated quant-mode I-BERT (eval forward on the given batch).

    Returns a dict:

    * ``"quant_acts"``: ``{name: {"bits", "x_min", "x_max", "scale"}}`` for every *live* QuantAct
      (the dead ones, :func:`ibert_ref.checkpoint_schema.is_dead_quant_act`, are left out);
    * ``"ln_shifts"``: ``{name: shift}`` for every IntLayerNorm;
    * ``"attention"`` (only when ``input_ids`` is given): ``{layer_name: {"rows", "uniform_rows",
      "uniform_fraction", "mean_max_prob"}}`` from the IntSoftmax integer outputs, counting only
      query rows of real tokens with >= 2 unmasked keys; a row is uniform when all its unmasked
      probability integers are equal;
    * ``"softmax_overflow"``: True if any IntSoftmax 16-bit QuantAct saw a non-finite value.

    Names are ``named_modules()`` names of the base IBertModel (no ``ibert.`` prefix).
    """
    from transformers.models.ibert.quant_modules import IntLayerNorm, IntSoftmax, QuantAct

    base = _base_model(model)
    report = {"quant_acts": {}, "ln_shifts": {}}
    for name, mod in base.named_modules():
        if isinstance(mod, QuantAct):
            if is_dead_quant_act(name):
                continue
            n = 2 ** (mod.activation_bit - 1) - 1
            x_min, x_max = float(mod.x_min.item()), float(mod.x_max.item())
            report["quant_acts"][name] = {
                "bits": mod.activation_bit, "x_min": x_min, "x_max": x_max,
                "scale": max(abs(x_min), abs(x_max), 1e-8) / n,
            }
        elif isinstance(mod, IntLayerNorm):
            report["ln_shifts"][name] = int(mod.shift.item())
    if input_ids is None:
        return report

    probs, overflow, hooks = {}, [False], []

    def sm_hook(name):
        def hook(mod, args, out):
            p, s = out
            if s is not None:
                probs[name] = torch.round(p / s).to(torch.int64)
        return hook

    def act_hook(mod, args, out):
        x, pre = args[0], args[1]
        with torch.no_grad():
            z = x / pre
        if not torch.isfinite(z).all():
            overflow[0] = True

    for name, mod in base.named_modules():
        if isinstance(mod, IntSoftmax):
            hooks.append(mod.register_forward_hook(sm_hook(name)))
            if isinstance(getattr(mod, "act", None), QuantAct):
                hooks.append(mod.act.register_forward_hook(act_hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keymask = attention_mask.bool()[:, None, None, :]  # (B,1,1,T)
    qmask = attention_mask.bool()[:, None, :]  # (B,1,T)
    att = {}
    for name, p in probs.items():
        km = keymask.expand_as(p)
        big = torch.where(km, p, torch.iinfo(torch.int64).min).amax(-1)
        small = torch.where(km, p, torch.iinfo(torch.int64).max).amin(-1)
        nkeys = km.sum(-1)
        rows = qmask.expand_as(big) & (nkeys >= 2)
        uniform = (big == small) & rows
        nrows = int(rows.sum())
        att[name] = {
            "rows": nrows,
            "uniform_rows": int(uniform.sum()),
            "uniform_fraction": float(uniform.sum()) / max(nrows, 1),
            "mean_max_prob": float(big[rows].double().mean() / 256.0) if nrows else float("nan"),
        }
    report["attention"] = att
    report["softmax_overflow"] = overflow[0]
    return report


def format_report(report):
    """Render :func:`calibration_report` output as plain text lines."""
    lines = ["QuantAct ranges (bits, x_min, x_max, scale):"]
    for name, r in report["quant_acts"].items():
        lines.append(f"  {name:55s} {r['bits']:2d}  {r['x_min']:+.6g}  {r['x_max']:+.6g}  {r['scale']:.6g}")
    lines.append("IntLayerNorm shifts:")
    for name, s in report["ln_shifts"].items():
        lines.append(f"  {name:55s} {s}")
    if "attention" in report:
        lines.append("Attention (IntSoftmax integer outputs):")
        for name, a in report["attention"].items():
            lines.append(f"  {name:55s} uniform rows {a['uniform_rows']}/{a['rows']} "
                         f"({a['uniform_fraction']:.1%}), mean max prob {a['mean_max_prob']:.3f}")
        lines.append(f"  softmax 16-bit QuantAct overflow: {report['softmax_overflow']}")
    return lines


def folder_size_bytes(folder):
    """Total size in bytes of the regular files directly inside ``folder``."""
    return sum(os.path.getsize(p) for p in Path(folder).iterdir() if p.is_file())
