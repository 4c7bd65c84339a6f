"""An nn.Module to profile: `tstack profile examples/my_model.py:build --input-shape 1x128`.

`build()` returns the module; any function with no arguments that returns an nn.Module works.
"""

from transformers import BertConfig, BertModel


def build() -> BertModel:
    return BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                vocab_size=100, attn_implementation="eager"))
