"""transformers' I-BERT as a benchmark system for ``ibert-ref bench`` (torch lives here, in the
oracle package, never in the simulator core)."""

from __future__ import annotations


class TransformersSystem:
    """transformers' I-BERT (quant_mode as asked), torch float32 on CPU, no grad."""

    def __init__(self, model_path, quant_mode):
        try:
            import torch
            import transformers
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("transformers systems need the verify extra: pip install 'ibert-ref[verify]'") from exc
        self.torch = torch
        torch.set_grad_enabled(False)
        self.model = transformers.IBertModel.from_pretrained(str(model_path), quant_mode=quant_mode).eval()
        self.config = self.model.config.to_dict()

    def weight_bytes(self):
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        buffers = sum(b.numel() * b.element_size() for b in self.model.buffers())
        return {"resident": params + buffers, "parameters": params}

    def forward(self, ids, mask):
        t = self.torch
        return self.model(input_ids=t.from_numpy(ids), attention_mask=t.from_numpy(mask))
