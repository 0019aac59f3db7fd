// Testbench: ibert_requantizer against the golden vectors of one requantization op.
// Reads $readmemh files written by `ibert-ref vectors` (input, optional residual input, golden
// output) and per-channel multiplier files (m: 33-bit two's complement, e: 8 bits; written by
// `python -m ibert_ref.hardware.rtl_tb`), compares every element bit for bit and prints the
// first mismatch and a PASS/FAIL line. Plusargs (all required unless marked):
//   +NAME=op  +N=elements
//   +IN=file +IN_BITS=b          input z, one element per line, two's complement at b bits
//   +M=file +E=file +C=channels  per-channel m and e (element i uses channel i % C)
//   +ID=file +ID_BITS=b +M_ID=file +E_ID=file +C_ID=channels     (optional: residual branch)
//   +OUT=file +OUT_BITS=b +SAT=B golden output (b bits per line), saturation width B
`timescale 1ns / 1ps
module tb_requant;
    parameter MAXN = 1 << 17;   // elements (override: iverilog -P tb_requant.MAXN=...)
    parameter MAXC = 1 << 13;   // channels

    reg [63:0] in_mem [0:MAXN-1];
    reg [63:0] id_mem [0:MAXN-1];
    reg [63:0] out_mem [0:MAXN-1];
    reg [35:0] m_mem [0:MAXC-1];
    reg [7:0]  e_mem [0:MAXC-1];
    reg [35:0] mid_mem [0:MAXC-1];
    reg [7:0]  eid_mem [0:MAXC-1];

    reg [8*1024-1:0] f_in, f_id, f_out, f_m, f_e, f_mid, f_eid, name;
    integer n, c, cid, in_bits, id_bits, out_bits, sat_bits, has_id, i, bad;

    reg signed [63:0] z, z_id, expected;
    reg signed [32:0] m, m_id;
    reg [7:0] e, e_id;
    wire signed [31:0] q;

    ibert_requantizer dut (.z(z), .m(m), .e(e), .has_id(has_id[0]), .z_id(z_id), .m_id(m_id), .e_id(e_id),
                           .out_bits(sat_bits[5:0]), .q(q));

    `include "tb_common.vh"

    initial begin
        need($value$plusargs("NAME=%s", name), "NAME");
        need($value$plusargs("N=%d", n), "N");
        need($value$plusargs("IN=%s", f_in), "IN");
        need($value$plusargs("IN_BITS=%d", in_bits), "IN_BITS");
        need($value$plusargs("M=%s", f_m), "M");
        need($value$plusargs("E=%s", f_e), "E");
        need($value$plusargs("C=%d", c), "C");
        need($value$plusargs("OUT=%s", f_out), "OUT");
        need($value$plusargs("OUT_BITS=%d", out_bits), "OUT_BITS");
        need($value$plusargs("SAT=%d", sat_bits), "SAT");
        has_id = $value$plusargs("ID=%s", f_id);
        if (n > MAXN || c > MAXC) begin
            $display("FAIL %0s: %0d elements / %0d channels exceed MAXN=%0d / MAXC=%0d", name, n, c, MAXN, MAXC);
            $finish;
        end
        $readmemh(f_in, in_mem, 0, n - 1);
        $readmemh(f_out, out_mem, 0, n - 1);
        $readmemh(f_m, m_mem, 0, c - 1);
        $readmemh(f_e, e_mem, 0, c - 1);
        if (has_id) begin
            need($value$plusargs("ID_BITS=%d", id_bits), "ID_BITS");
            need($value$plusargs("M_ID=%s", f_mid), "M_ID");
            need($value$plusargs("E_ID=%s", f_eid), "E_ID");
            need($value$plusargs("C_ID=%d", cid), "C_ID");
            $readmemh(f_id, id_mem, 0, n - 1);
            $readmemh(f_mid, mid_mem, 0, cid - 1);
            $readmemh(f_eid, eid_mem, 0, cid - 1);
        end
        bad = 0;
        for (i = 0; i < n; i = i + 1) begin
            z = sext(in_mem[i], in_bits);
            m = m_mem[i % c][32:0];
            e = e_mem[i % c];
            if (has_id) begin
                z_id = sext(id_mem[i], id_bits);
                m_id = mid_mem[i % cid][32:0];
                e_id = eid_mem[i % cid];
            end else begin
                z_id = 0; m_id = 0; e_id = 0;
            end
            #1;
            expected = sext(out_mem[i], out_bits);
            if ($signed(q) !== expected) begin
                if (bad == 0)
                    $display("FIRST MISMATCH %0s: element %0d (channel %0d): z=%0d m=%0d e=%0d z_id=%0d m_id=%0d e_id=%0d expected %0d got %0d",
                             name, i, i % c, z, m, e, z_id, m_id, e_id, expected, $signed(q));
                bad = bad + 1;
            end
        end
        if (bad == 0) $display("PASS %0s: %0d elements bit-equal", name, n);
        else $display("FAIL %0s: %0d of %0d elements differ", name, bad, n);
        $finish;
    end
endmodule
