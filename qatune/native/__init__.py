"""qatune.native: a from-scratch BERT (Hugging Face-compatible weights and outputs) and LoRA (PEFT-compatible
adapters) that need neither transformers nor PEFT at run time."""

from qatune.native import lora
from qatune.native.bert import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
)

__all__ = ["BertConfig", "BertForQuestionAnswering", "BertForSequenceClassification", "BertModel", "lora"]
