// I-BERT's i-exp with its 16-bit requantization (IntSoftmax's QuantAct), synthesizable
// Verilog-2005, combinational. Golden model: ibert_ref.kernels.int_exp on the exact datapath.
//
// Input x = S - rowmax(S) (x <= 0; a masked key: any x <= x0_30). Constants from the
// manifest entry of the ``softmax.act`` op: x0_int (< 0), x0_30 = 30 * x0_int, b_int, c_int,
// and dy_exact = (m, e).
//
//   1. xc   = max(x, x0_30)
//   2. z_q  = floor(xc / x0_int) in 0..30,  r = xc - x0_int * z_q     (r in (x0_int, 0])
//   3. poly = (r + b_int) * r + c_int                                   (signed 64)
//   4. e16  = min(RNE(max(poly, 0) * m / 2^(e - 30 + z_q)), 2^15 - 1)    (never negative)
//
// Step 2 is a 5-step restoring division of |xc| by |x0_int| (the quotient is at most 30);
// step 4 folds exp_int = poly * 2^(30 - z_q) (up to ~70 bits) into the rounding shift, so
// exp_int is never formed. Requires 30 <= e <= 225 (I-BERT's e is about 67) and
// |x0_int| < 2^26.
// ROUND_HALF_UP / `IBERT_ROUND_HALF_UP as in ibert_requant.v.

`timescale 1ns / 1ps

`include "ibert_defs.vh"

module ibert_iexp16 #(
    parameter ROUND_HALF_UP = `IBERT_RHU_DEFAULT
) (
    input  wire signed [31:0] x,
    input  wire signed [31:0] x0_int,
    input  wire signed [31:0] x0_30,
    input  wire signed [31:0] b_int,
    input  wire signed [63:0] c_int,
    input  wire signed [32:0] m,
    input  wire        [7:0]  e,
    output wire        [15:0] e16
);
    wire signed [31:0] xc = (x < x0_30) ? x0_30 : x;
    wire        [31:0] num = -xc;                        // |xc|, 0 .. 30 |x0_int|
    wire        [31:0] den = -x0_int;                    // |x0_int| > 0
    // restoring division, quotient bits 4..0
    wire [31:0] rem4 = (num  >= (den << 4)) ? num  - (den << 4) : num;
    wire [31:0] rem3 = (rem4 >= (den << 3)) ? rem4 - (den << 3) : rem4;
    wire [31:0] rem2 = (rem3 >= (den << 2)) ? rem3 - (den << 2) : rem3;
    wire [31:0] rem1 = (rem2 >= (den << 1)) ? rem2 - (den << 1) : rem2;
    wire [31:0] rem0 = (rem1 >= den)        ? rem1 - den        : rem1;
    wire [4:0]  z_q = {num >= (den << 4), rem4 >= (den << 3), rem3 >= (den << 2), rem2 >= (den << 1), rem1 >= den};
    wire signed [63:0] r = -$signed({32'd0, rem0});      // xc - x0_int * z_q
    wire signed [63:0] b64 = $signed({{32{b_int[31]}}, b_int});
    wire signed [63:0] poly = (r + b64) * r + c_int;
    wire signed [63:0] poly_pos = poly[63] ? 64'sd0 : poly;
    wire        [7:0]  shift = e - 8'd30 + {3'd0, z_q};
    wire signed [96:0] y;
    ibert_dyadic_round #(.ROUND_HALF_UP(ROUND_HALF_UP)) requant (.z(poly_pos), .m(m), .e(shift), .y(y));
    assign e16 = (y > 97'sd32767) ? 16'd32767 : y[15:0];
endmodule
