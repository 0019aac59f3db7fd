// Shared by ibert_requant.v and ibert_iexp.v: the default of their ROUND_HALF_UP parameter.
// `define IBERT_ROUND_HALF_UP (iverilog -DIBERT_ROUND_HALF_UP) selects the round-half-up shortcut
// requantizer (a wrong one, kept so the golden vectors can show they catch it); default 0, round
// half to even.

`ifndef IBERT_RHU_DEFAULT
`ifdef IBERT_ROUND_HALF_UP
`define IBERT_RHU_DEFAULT 1
`else
`define IBERT_RHU_DEFAULT 0
`endif
`endif
