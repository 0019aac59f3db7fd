"""``ibert-ref widths``: the width census of one forward pass (bits needed vs bits provided)."""

from __future__ import annotations

from . import add_model_options, load_model_and_tokenizer
from ._args import HelpFormatter, check_layers, input_text, layer_list
from .run import format_overflow_events


def add_parser(sub) -> None:
    p = sub.add_parser(
        "widths",
        help="width census: per op and intermediate, the bits needed on given inputs vs the bits provided",
        description="Run the integer model once on --text (or raw --ids) and print, for every op output and "
        "every kernel intermediate (attention scores, i-exp polynomial and transformers' exp_int, softmax "
        "sum/factor/product, IntGELU erf polynomial and product, LayerNorm sum/var/y*factor, ...), the signed "
        "min/max, the bits needed (signed; unsigned when min >= 0), I-BERT's nominal width (declared output "
        "width; 32 for intermediates) and the width the --datapath models it in. Flags: '!' the profile cannot "
        "hold the value (it wrapped/saturated: see the overflow events), '*' it needs more than the nominal width.",
        formatter_class=HelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", default=None, type=input_text,
                     help="input text(s); several texts form a padded batch")
    src.add_argument(
        "--ids",
        action="append",
        default=None,
        metavar="IDS",
        help="a raw token-id sequence instead of text, e.g. --ids '0 1035 2' (repeatable: a padded batch; "
        "a one-id sequence gives single-key softmax rows)",
    )
    add_model_options(p)
    p.add_argument("--layers", default=None, type=layer_list(embeddings=True),
                   help="only these encoder layers, e.g. '0' or '0,3'; 'emb' = embeddings")
    p.add_argument("--flagged", action="store_true", help="only rows flagged '!' or '*'")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--vpmaddubsw", action="store_true",
                   help="also list, per int8 GEMM of the run, the u8 x s8 pair sums that x86 AVX2's vpmaddubsw would "
                   "saturate to int16 (activations shifted to u8; see --datapath x86-avx2 for the run itself)")
    p.set_defaults(func=run_widths)


def parse_layers(spec):
    """'0,3' -> {0, 3}; 'emb' is the embeddings (-1); None -> None (all); a parsed set as it is."""
    if spec is None or isinstance(spec, (set, frozenset)):
        return spec
    out = set()
    for item in spec.split(","):
        item = item.strip()
        out.add(-1 if item in ("emb", "embeddings") else int(item))
    return out


def ids_batch(sequences, pad_id: int, vocab_size=None):
    """Pad id sequences (strings of ints) into (input_ids, attention_mask)."""
    from ..input_files import pad_rows
    from ._inputs import parse_id_list

    seqs = [parse_id_list(s, "--ids", vocab_size) for s in sequences]
    if any(len(s) == 0 for s in seqs):
        raise ValueError("--ids needs at least one id per sequence")
    return pad_rows(seqs, pad_id)


def run_widths(args) -> int:
    from ..widths import width_census

    model, tokenizer = load_model_and_tokenizer(args)
    check_layers({n for n in args.layers or () if n >= 0}, int(model.config["num_hidden_layers"]))
    if args.ids:
        input_ids, mask = ids_batch(args.ids, model.config.get("pad_token_id", 1), model.config.get("vocab_size"))
    else:
        enc = tokenizer(args.text)
        input_ids, mask = enc["input_ids"], enc["attention_mask"]
    census = width_census(model, input_ids, mask)
    dp = model.datapath
    describe = dp.describe() if hasattr(dp, "describe") else dp.name
    print(f"model: {model.source}")
    print(f"datapath: {describe}")
    print(f"inputs: {tuple(input_ids.shape)} (batch, tokens); live tokens per row {mask.sum(axis=1).tolist()}")
    print()
    print("\n".join(census.format(parse_layers(args.layers), args.flagged, args.markdown)))
    flagged = census.select(parse_layers(args.layers), flagged_only=True)
    print()
    print(f"{len(flagged)} flagged row(s): '!' = the profile cannot hold it, '*' = needs more than the nominal width")
    lines = format_overflow_events(census.overflow_events)
    if lines:
        print()
        print("\n".join(lines))
    if args.vpmaddubsw:
        from ..widths import format_pair_rows, vpmaddubsw_pairs

        rows = vpmaddubsw_pairs(model, input_ids, mask)
        print()
        print("x86 AVX2 vpmaddubsw: u8 x s8 pair sums (x0+128)*w0 + (x1+128)*w1 beyond int16 (saturated) per int8 GEMM")
        print("\n".join(format_pair_rows(rows, parse_layers(args.layers))))
    return 0
