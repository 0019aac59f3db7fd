// Testbench: ibert_iexp16 against the golden vectors of one ``softmax.act`` op (i-exp + its
// 16-bit requantization). Reads the op's input scores [B, H, T, T] (int32) and the
// attention mask [B, T], forms x = S - rowmax (row max over live keys; a masked key gets
// x0_30, a row without live keys x = 0, as the golden model does), runs every element through
// the RTL and compares with the golden output. Plusargs:
//   +NAME=op +B= +H= +T=  +S=file +S_BITS=b  +MASK=file +MASK_BITS=b  +OUT=file +OUT_BITS=b
//   +X0= +X030= +BINT= +CINT= +M= +E=      (decimal; the manifest's x0_int, x0_30, b_int,
//                                            c_int and dy_exact m, e)
`timescale 1ns / 1ps
module tb_iexp;
    parameter MAXN = 1 << 18;   // score elements
    parameter MAXR = 1 << 12;   // B * T

    reg [63:0] s_mem [0:MAXN-1];
    reg [63:0] out_mem [0:MAXN-1];
    reg [63:0] mask_mem [0:MAXR-1];

    reg [8*1024-1:0] f_s, f_mask, f_out, name;
    integer nb, nh, nt, s_bits, mask_bits, out_bits, b, h, i, j, idx, live, bad, n;
    reg signed [63:0] x0_64, x030_64, bint_64, cint_64, m_64, e_64, rowmax, sv, xv, expected;

    reg signed [31:0] x, x0_int, x0_30, b_int;
    reg signed [63:0] c_int;
    reg signed [32:0] m;
    reg [7:0] e;
    wire [15:0] e16;

    ibert_iexp16 dut (.x(x), .x0_int(x0_int), .x0_30(x0_30), .b_int(b_int), .c_int(c_int), .m(m), .e(e), .e16(e16));

    `include "tb_common.vh"

    initial begin
        need($value$plusargs("NAME=%s", name), "NAME");
        need($value$plusargs("B=%d", nb), "B");
        need($value$plusargs("H=%d", nh), "H");
        need($value$plusargs("T=%d", nt), "T");
        need($value$plusargs("S=%s", f_s), "S");
        need($value$plusargs("S_BITS=%d", s_bits), "S_BITS");
        need($value$plusargs("MASK=%s", f_mask), "MASK");
        need($value$plusargs("MASK_BITS=%d", mask_bits), "MASK_BITS");
        need($value$plusargs("OUT=%s", f_out), "OUT");
        need($value$plusargs("OUT_BITS=%d", out_bits), "OUT_BITS");
        need($value$plusargs("X0=%d", x0_64), "X0");
        need($value$plusargs("X030=%d", x030_64), "X030");
        need($value$plusargs("BINT=%d", bint_64), "BINT");
        need($value$plusargs("CINT=%d", cint_64), "CINT");
        need($value$plusargs("M=%d", m_64), "M");
        need($value$plusargs("E=%d", e_64), "E");
        n = nb * nh * nt * nt;
        if (n > MAXN || nb * nt > MAXR) begin
            $display("FAIL %0s: %0d elements exceed MAXN=%0d (or B*T > MAXR)", name, n, MAXN);
            $finish;
        end
        x0_int = x0_64; x0_30 = x030_64; b_int = bint_64; c_int = cint_64; m = m_64; e = e_64;
        $readmemh(f_s, s_mem, 0, n - 1);
        $readmemh(f_out, out_mem, 0, n - 1);
        $readmemh(f_mask, mask_mem, 0, nb * nt - 1);
        bad = 0;
        for (b = 0; b < nb; b = b + 1)
            for (h = 0; h < nh; h = h + 1)
                for (i = 0; i < nt; i = i + 1) begin
                    idx = ((b * nh + h) * nt + i) * nt;
                    live = 0;
                    rowmax = 0;
                    for (j = 0; j < nt; j = j + 1)
                        if (mask_mem[b * nt + j] != 0) begin
                            sv = sext(s_mem[idx + j], s_bits);
                            if (live == 0 || sv > rowmax) rowmax = sv;
                            live = 1;
                        end
                    for (j = 0; j < nt; j = j + 1) begin
                        if (live == 0) xv = 0;
                        else if (mask_mem[b * nt + j] == 0) xv = x030_64;
                        else begin
                            xv = sext(s_mem[idx + j], s_bits) - rowmax;
                            if (xv < x030_64) xv = x030_64;
                        end
                        x = xv;
                        #1;
                        expected = sext(out_mem[idx + j], out_bits);
                        if ($signed({1'b0, e16}) !== expected) begin
                            if (bad == 0)
                                $display("FIRST MISMATCH %0s: element %0d (b %0d, head %0d, query %0d, key %0d): x=%0d expected %0d got %0d",
                                         name, idx + j, b, h, i, j, x, expected, e16);
                            bad = bad + 1;
                        end
                    end
                end
        if (bad == 0) $display("PASS %0s: %0d elements bit-equal", name, n);
        else $display("FAIL %0s: %0d of %0d elements differ", name, bad, n);
        $finish;
    end
endmodule
