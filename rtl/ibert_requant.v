// I-BERT requantization in synthesizable Verilog-2005 (combinational; register it where your
// pipeline needs). Golden model: ibert_ref.kernels.requantize on the exact datapath.
//
//   ibert_dyadic_round:  y = RNE(z * m / 2^e)     round half to even of the exact product
//   ibert_requantizer:   q = sat_B( RNE(z * m / 2^e) + [has_id] RNE(z_id * m_id / 2^e_id) )
//
// Widths: z, z_id signed 64 (I-BERT's widest requantization input is IntGELU's ~40-bit
// product); m, m_id signed 33 (I-BERT's 31-bit mantissa: 2^30 <= |m| <= 2^31, and 2^31 needs a
// 33rd bit when signed); e, e_id unsigned 8 (0..255); the product is exact in 97 bits
// (|z*m| <= 2^94), so every e >= 96 rounds to 0 and e is clamped to 96 (real checkpoints have
// channels with e up to ~160, where LayerNorm's gamma is nearly 0).
// out_bits B in 2..32 (I-BERT uses 8, 16 and 22); q is sign-extended to 32 bits.
//
// `define IBERT_ROUND_HALF_UP (or parameter ROUND_HALF_UP = 1) selects the common shortcut
// y = (z * m + 2^(e-1)) >> e, which rounds ties toward +inf instead of to even: a wrong
// requantizer, kept so the testbench can show that the golden vectors catch it.

`timescale 1ns / 1ps

`include "ibert_defs.vh"

module ibert_dyadic_round #(
    parameter ROUND_HALF_UP = `IBERT_RHU_DEFAULT
) (
    input  wire signed [63:0] z,
    input  wire signed [32:0] m,
    input  wire        [7:0]  e,
    output wire signed [96:0] y
);
    wire signed [96:0] p = z * m;                       // exact: |z*m| <= 2^94
    wire        [6:0]  s = (e > 8'd96) ? 7'd96 : e[6:0];  // e >= 96 gives 0 either way
    wire        [96:0] one = 97'd1;
    wire        [96:0] half = (s == 7'd0) ? 97'd0 : (one << (s - 7'd1));
    wire        [96:0] mask = (s == 7'd0) ? 97'd0 : ((one << s) - one);
    wire signed [96:0] q = p >>> s;                     // floor(p / 2^s)
    wire        [96:0] r = p & mask;                    // p - q * 2^s, in [0, 2^s)
    // round half to even: up when r > 1/2, or r = 1/2 and q is odd
    wire rne_up = (r > half) || ((r == half) && (s != 7'd0) && q[0]);
    wire signed [96:0] y_rne = q + {96'd0, rne_up};
    wire signed [96:0] y_rhu = (p + $signed(half)) >>> s; // the shortcut: ties toward +inf
    assign y = ROUND_HALF_UP ? y_rhu : y_rne;
endmodule

module ibert_requantizer #(
    parameter ROUND_HALF_UP = `IBERT_RHU_DEFAULT
) (
    input  wire signed [63:0] z,
    input  wire signed [32:0] m,
    input  wire        [7:0]  e,
    input  wire               has_id,     // residual (identity) branch present
    input  wire signed [63:0] z_id,
    input  wire signed [32:0] m_id,
    input  wire        [7:0]  e_id,
    input  wire        [5:0]  out_bits,   // saturation width B, 2..32
    output wire signed [31:0] q
);
    wire signed [96:0] y_main, y_id;
    ibert_dyadic_round #(.ROUND_HALF_UP(ROUND_HALF_UP)) main_branch (.z(z), .m(m), .e(e), .y(y_main));
    ibert_dyadic_round #(.ROUND_HALF_UP(ROUND_HALF_UP)) id_branch (.z(z_id), .m(m_id), .e(e_id), .y(y_id));
    wire signed [97:0] main98 = $signed({y_main[96], y_main});
    wire signed [97:0] id98 = has_id ? $signed({y_id[96], y_id}) : 98'sd0;
    wire signed [97:0] sum = main98 + id98;
    wire signed [97:0] hi = (98'sd1 <<< (out_bits - 6'd1)) - 98'sd1;   //  2^(B-1) - 1
    wire signed [97:0] lo = -(98'sd1 <<< (out_bits - 6'd1));           // -2^(B-1)
    /* verilator lint_off UNUSEDSIGNAL */
    wire signed [97:0] sat = (sum > hi) ? hi : ((sum < lo) ? lo : sum);   // fits B <= 32 bits
    /* verilator lint_on UNUSEDSIGNAL */
    assign q = sat[31:0];
endmodule
