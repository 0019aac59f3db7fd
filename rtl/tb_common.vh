// Shared by the testbenches (included inside their module): reading golden-vector lines and
// plusargs.

    // a value read from a b-bit two's complement hex line, sign-extended to 64 bits
    function signed [63:0] sext;
        input [63:0] v;
        input integer bits;
        begin
            if (bits >= 64) sext = v;
            else sext = (v ^ (64'd1 << (bits - 1))) - (64'd1 << (bits - 1));
        end
    endfunction

    // need(ok, what): a required plusarg was given, else FAIL and stop
    task need;
        input ok;
        input [8*16-1:0] what;
        begin
            if (!ok) begin
                $display("FAIL: missing plusarg +%0s", what);
                $finish;
            end
        end
    endtask
