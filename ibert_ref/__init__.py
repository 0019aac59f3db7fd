"""ibert-ref: a NumPy integer reference simulator of I-BERT.

    >>> import ibert_ref
    >>> model = ibert_ref.IBertModel.from_pretrained()          # bundled tiny model
    >>> tok = ibert_ref.Tokenizer.from_pretrained()
    >>> out = model(**tok("The capital of France is Paris."), return_trace=True)
    >>> out.trace["encoder.layer.0.attention.self.softmax"].dtype
    dtype('int16')

The simulator core imports only NumPy, safetensors, huggingface_hub and tokenizers;
torch/transformers (the oracle) live in ``ibert_ref.oracle`` and are optional.
"""

from .datapath import DATAPATHS, ExactDatapath, QTensor, TransformersDatapath, available_datapaths, make_datapath
from .heads import (
    IBertForMaskedLM,
    IBertForMultipleChoice,
    IBertForQuestionAnswering,
    IBertForSequenceClassification,
    IBertForTokenClassification,
)
from .model import IBertModel, IBertModelOutput

__version__ = "0.1.0"

__all__ = [
    "DATAPATHS",
    "ExactDatapath",
    "IBertForMaskedLM",
    "IBertForMultipleChoice",
    "IBertForQuestionAnswering",
    "IBertForSequenceClassification",
    "IBertForTokenClassification",
    "IBertModel",
    "IBertModelOutput",
    "QTensor",
    "Tokenizer",
    "TransformersDatapath",
    "available_datapaths",
    "make_datapath",
]


def __getattr__(name):
    # Tokenizer pulls in `tokenizers`; import it on first use.
    if name == "Tokenizer":
        from .tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(name)
